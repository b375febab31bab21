"""text8 (or any text in its format) as windows of characters: the ``Dataset``.

Tokens: a..z -> 0..25, space -> 26; mask 27. Splits: the first 90% of the
characters train, the next 5% validation, the last 5% test (text8: [0, 90M),
[90M, 95M), [95M, 100M), as in md4, D3PM and SEDD).

``from_config`` is the registry entry: it prepares the tfds dataset
(``text8_builder``, needs ``vmd_jax[text8]``) and wraps it. ``Text8Dataset``
itself needs only numpy: ``Text8Dataset.from_tokens`` takes tokens in memory.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator

import ml_collections
import numpy as np

from vmd_jax.data import base
from vmd_jax.data import text_normalize as tn
from vmd_jax.data.multihost import prepare_on_first_process
from vmd_jax.data.paths import as_path
from vmd_jax.data.text_sources import PYTHON_DOCS, SPLITS, split_bounds, write_python_docs_text


class Text8Dataset(base.Dataset):
  """Windows of ``seq_len`` characters of text8 (or text in its format).

  Each split is loaded on first use as one uint8 array in memory (90 MB for
  text8's train split).

  Train batches: ``{"x0": int32 [B, L]}``, windows at uniform random starts in
  the train split, drawn from ``base.rng_for_step(seed, step)``.
  With ``rows``, both give only those rows of each batch (``base.row_range``).
  Eval batches: ``{"x0": int32 [B, L], "weight": float32 [B, L]}`` over
  consecutive windows [i*L, (i+1)*L); if L does not divide the split length the
  last window is the split's final L characters, and the characters it shares
  with its predecessor get weight 0; rows padding the last batch get weight 0.
  The weights sum to the split length, or with ``num_eval`` (the first
  ``num_eval`` windows only) to the characters those windows count.
  """

  vocab_size = tn.VOCAB_SIZE
  EVAL_SPLIT = "test"  # what eval_batches reads unless told otherwise

  def __init__(self, load: Callable[[str], np.ndarray], seq_len: int = 256,
               seed: int = 0, num_eval: int = 0,
               num_chars: Callable[[str], int] | None = None):
    """``load(split)`` returns the uint8 tokens of "train", "validation" or "test".

    ``num_eval``: evaluate only the first ``num_eval`` windows (sequences of
    ``seq_len`` characters, rows of ``eval_batches``) of the split; 0: all.
    ``num_chars(split)``: the split's length without loading it (None:
    ``len(load(split))``). The splits a run uses, "train" and ``EVAL_SPLIT``,
    are checked here: one shorter than ``seq_len``, or a ``num_eval`` above
    ``EVAL_SPLIT``'s number of windows, is a ``ValueError``.
    """
    if seq_len < 1:
      raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if num_eval < 0:
      raise ValueError(f"num_eval must be >= 0 (0: every window), got {num_eval}")
    self.seq_len = seq_len
    self.seed = seed
    self.num_eval = int(num_eval)
    self._load = load
    self._splits: dict[str, np.ndarray] = {}
    num_chars = num_chars or (lambda split: len(self.split(split)))
    for split in ("train", self.EVAL_SPLIT):
      self._check_length(split, num_chars(split))
    windows = -(-num_chars(self.EVAL_SPLIT) // seq_len)
    if self.num_eval > windows:
      raise ValueError(f"num_eval={self.num_eval} is more than the {windows} windows of "
                       f"seq_len={seq_len} in split {self.EVAL_SPLIT!r}; accepted: 0 "
                       f"(all) to {windows}")

  @classmethod
  def from_builder(cls, builder, seq_len: int = 256, seed: int = 0,
                   num_eval: int = 0) -> Text8Dataset:
    """Over a prepared ``text8_builder.Text8`` builder; split lengths are read from
    its metadata (``split_chars``) where it has them, not by loading the splits."""
    from vmd_jax.data.text8_builder import load_split
    lengths = builder.info.metadata.get("split_chars", {})
    num_chars = (lambda split: int(lengths[split])) if set(SPLITS) <= set(lengths) else None
    return cls(lambda split: load_split(builder, split), seq_len, seed, num_eval, num_chars)

  @classmethod
  def from_tokens(cls, tokens: np.ndarray, seq_len: int = 256, seed: int = 0,
                  num_eval: int = 0) -> Text8Dataset:
    """Over uint8 tokens [N], split 90/5/5 by ``split_bounds``."""
    tokens = np.asarray(tokens, np.uint8)
    bounds = split_bounds(len(tokens))
    return cls(lambda split: tokens[slice(*bounds[split])], seq_len, seed, num_eval,
               lambda split: bounds[split][1] - bounds[split][0])

  def split(self, name: str) -> np.ndarray:
    """uint8 [num_chars] tokens of split ``name``."""
    if name not in SPLITS:
      raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
    if name not in self._splits:
      tokens = np.asarray(self._load(name), np.uint8)
      self._check_length(name, len(tokens))
      self._splits[name] = tokens
    return self._splits[name]

  def _check_length(self, name: str, num_chars: int) -> None:
    if num_chars < self.seq_len:
      raise ValueError(f"split {name!r} has {num_chars} characters, fewer than "
                       f"seq_len={self.seq_len}; accepted: seq_len <= {num_chars}, "
                       f"or a longer text")

  def train_batch(self, step: int, batch_size: int, rows: slice | None = None) -> base.Batch:
    rows = base.row_range(rows, batch_size)
    tokens = self.split("train")
    rng = base.rng_for_step(self.seed, step)
    starts = rng.integers(0, len(tokens) - self.seq_len + 1, size=batch_size)[rows]
    x0 = tokens[starts[:, None] + np.arange(self.seq_len)]
    return {"x0": x0.astype(np.int32)}

  def eval_windows(self, split: str = EVAL_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """(starts int64 [W], first_counted int64 [W]) of the evaluation windows.

    Window w covers [starts[w], starts[w] + L); its positions before
    ``first_counted[w]`` were counted by an earlier window. With ``num_eval``,
    only the first ``num_eval`` windows (W = min(num_eval, all)).
    """
    n, length = len(self.split(split)), self.seq_len
    starts = np.arange(n // length, dtype=np.int64) * length
    first = np.zeros_like(starts)
    if n % length:
      starts = np.append(starts, n - length)
      first = np.append(first, length - n % length)
    if self.num_eval:
      starts, first = starts[:self.num_eval], first[:self.num_eval]
    return starts, first

  def eval_batches(self, batch_size: int, rows: slice | None = None,
                   split: str = EVAL_SPLIT) -> Iterator[base.Batch]:
    rows = base.row_range(rows, batch_size)
    tokens = self.split(split)
    starts, first = self.eval_windows(split)
    positions = np.arange(self.seq_len)
    for b in range(0, len(starts), batch_size):
      lo, hi = b + rows.start, min(b + rows.stop, len(starts))
      s, f = starts[lo:hi], first[lo:hi]
      x0 = np.zeros((rows.stop - rows.start, self.seq_len), np.int32)
      weight = np.zeros((rows.stop - rows.start, self.seq_len), np.float32)
      x0[:len(s)] = tokens[s[:, None] + positions]
      weight[:len(s)] = positions[None, :] >= f[:, None]
      yield {"x0": x0, "weight": weight}

  def score_samples(self, draw, key, eval_config, figure_path=None) -> dict:
    """Four unconditional samples, decoded: ``{"text": [...], "nfe": int}``."""
    x, nfe = draw(key, np.full((4, self.seq_len), self.vocab_size, np.int32))
    return {"text": [tn.decode(row) for row in np.asarray(x)], "nfe": int(nfe)}


# The fields of ``config.data.text8`` that hold local paths (``path`` may also
# name a source: "python-docs").
PATH_FIELDS = ("path", "data_dir")
SOURCES = ("text8", "local")


def default_config() -> ml_collections.ConfigDict:
  """``config.data.text8``: where the text comes from and where it is prepared."""
  c = ml_collections.ConfigDict()
  c.source = "local"     # "text8" (the real corpus) or "local" (any text)
  c.path = ""            # text8 / text8.zip, or local text file / folder
  c.data_dir = ""        # where tfds writes the prepared dataset
  c.normalize = True     # normalise local text to text8's alphabet
  return c


def check_config(data_config, in_use: bool) -> None:
  del in_use
  if data_config.text8.source not in SOURCES:
    raise ValueError(f"config.data.text8.source = {data_config.text8.source!r}; accepted "
                     f"values: {list(SOURCES)}")


def from_config(data_config, seed: int) -> Text8Dataset:
  """The ``Text8Dataset`` a run's ``config.data`` names (windows of ``seq_len``,
  default 256; ``num_eval``: evaluate the test split's first ``num_eval``
  windows, 0: all), from ``config.data.text8``:

  ``source = "text8"``: the real corpus from ``path`` (text8 or text8.zip), else
  the tfds manual dir, else the public download; ``source = "local"``: the text
  file or folder at ``path``, normalised unless ``normalize`` is off; ``path =
  "python-docs"`` (or empty) uses Python's documentation
  (``write_python_docs_text``). Prepared once under ``data_dir`` (default
  ~/tensorflow_datasets; local or ``gs://``), by process 0 alone when several
  share it; the others wait, then read it.
  """
  t = data_config.text8
  data_dir = as_path(t.data_dir or "~/tensorflow_datasets")
  prepare_on_first_process(lambda: _prepare(t, data_dir), f"preparing text8 in {data_dir}")
  return Text8Dataset.from_builder(_builder(t, data_dir),
                                   seq_len=data_config.seq_len or 256, seed=seed,
                                   num_eval=data_config.num_eval)


def config_shape(data_config) -> tuple[int, int]:
  """(V, N) of the windows ``config.data`` asks for, without preparing the text
  (``trainer.compile``)."""
  return tn.VOCAB_SIZE, data_config.seq_len or 256


def _builder(t, data_dir):
  """The tfds builder of ``config.data.text8`` ``t`` (not prepared)."""
  from vmd_jax.data.text8_builder import Text8, local_text_config
  if t.source == "text8":
    return Text8(data_dir=os.fspath(data_dir), config="text8", local_path=t.path or None)
  path = data_dir / "python_docs.txt" if t.path in ("", PYTHON_DOCS) else t.path
  return Text8(data_dir=os.fspath(data_dir),
               config=local_text_config(path, normalize=t.normalize))


def _prepare(t, data_dir):
  if t.source != "text8" and t.path in ("", PYTHON_DOCS):
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "python_docs.txt").exists():
      write_python_docs_text(data_dir / "python_docs.txt")
  _builder(t, data_dir).download_and_prepare()


def render(tokens) -> str:
  """Tokens as text8 characters (a mask shows as ``_``)."""
  return tn.decode(tokens)
