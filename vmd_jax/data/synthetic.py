"""Synthetic joints over V^N sequences (VMD paper, Zhang et al. 2025, arXiv:2510.23606) and their metrics.

A joint is a probability vector ``probs`` of length V^N: entry j is the
probability of ``exact.all_sequences(V, N)[j]``, the base-V digits of j
(big-endian), which is also the C-order flattening of an array of shape (V,)*N.

Named tables (V = 10 digits, arithmetic mod 10):
  two_token_uniform     N=2, support {(k, k+1)}, P(k) = 1/10;
  two_token_nonuniform  N=2, support {(k, k+1)}, P(k) = (k+1)/55;
  d1                    N=4, support {(k, k+1, k+2, k+3)}, 10 sequences, 1/10 each;
  d2                    N=4, support {(k, k+1, l, l+1)}, 100 sequences, 1/100 each.

Metrics (the paper's): accuracy = fraction of samples inside the support;
KL(data || empirical distribution of the samples) in nats; plus total variation.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, NamedTuple

import ml_collections
import numpy as np
from etils import epath

from vmd_jax import exact
from vmd_jax.data import base

SUM_TOLERANCE = 1e-6
# Evaluation samples come from base.rng_for_step(eval_seed, EVAL_STEP): no
# training step (< 2^32) draws from the same stream.
EVAL_STEP = 2**40
# Floor on the empirical probability of a support sequence that no sample hit.
# Each such sequence of mass p adds p * log(p / KL_FLOOR) nats to the KL. The
# paper does not state its floor; 1e-8 gives one-step MDM (uniform samples,
# 10,000 of them) an expected KL of about 10.1 (sd 1.4) on D1 and 7.8 (sd 0.4) on
# D2, against the published 9.42 and 7.49 (1e-10 would give about 9.5 on D2).
KL_FLOOR = 1e-8


def validate_probs(probs, vocab_size: int, seq_len: int, source: str = "probs") -> np.ndarray:
  """The joint as float64 [V^N], renormalised; accepts shape [V^N] or (V,)*N.

  Raises ValueError naming ``source`` (e.g. the file) for a wrong shape,
  non-finite or negative entries, or a sum further than 1e-6 from 1.
  """
  if int(vocab_size) != vocab_size or vocab_size < 1 or int(seq_len) != seq_len or seq_len < 1:
    raise ValueError(f"vocab_size and seq_len must be positive integers, got {vocab_size}, "
                     f"{seq_len}")
  probs = np.asarray(probs)
  size = vocab_size**seq_len
  if probs.shape not in ((size,), (vocab_size,) * seq_len):
    raise ValueError(
        f"{source}: a joint over V={vocab_size} tokens at N={seq_len} positions needs shape "
        f"({size},) = (V**N,) or {(vocab_size,) * seq_len} = (V,)*N; got shape {probs.shape}")
  if not np.issubdtype(probs.dtype, np.number) or np.issubdtype(probs.dtype, np.complexfloating):
    raise ValueError(f"{source}: probabilities must be real numbers, got dtype {probs.dtype}")
  probs = probs.astype(np.float64).ravel()
  if not np.all(np.isfinite(probs)):
    raise ValueError(f"{source}: probabilities must be finite; entry "
                     f"{np.argmin(np.isfinite(probs))} is not")
  if np.any(probs < 0):
    j = int(np.argmin(probs))
    sequence = [int(d) for d in np.unravel_index(j, (vocab_size,) * seq_len)]
    raise ValueError(f"{source}: probabilities must be non-negative; entry {j} "
                     f"(sequence {sequence}) is {probs[j]}")
  total = probs.sum()
  if abs(total - 1.0) > SUM_TOLERANCE:
    raise ValueError(f"{source}: probabilities must sum to 1 (within {SUM_TOLERANCE}), "
                     f"got {float(total):.9g}")
  return probs / total


class ProbabilityTable(base.Dataset):
  """I.i.d. sequences from an explicit joint ``probs`` over all V^N sequences.

  Args:
    probs: float [V^N] (row j = ``exact.all_sequences(V, N)[j]``) or (V,)*N.
    vocab_size, seq_len: V and N.
    seed: training batches are drawn with ``base.rng_for_step(seed, step)``.
    num_eval: size of the fixed evaluation set.
    eval_seed: seed of the evaluation set, independent of ``seed`` so that runs
      with different training seeds evaluate on the same samples.
    name: shown in messages and figures.
  """

  def __init__(self, probs, vocab_size: int, seq_len: int, *, seed: int = 0,
               num_eval: int = 10_000, eval_seed: int = 0, name: str = "table"):
    self.probs = validate_probs(probs, vocab_size, seq_len, source=name)
    if num_eval < 1:
      raise ValueError(f"num_eval must be positive, got {num_eval}")
    self.vocab_size, self.seq_len = int(vocab_size), int(seq_len)
    self.seed, self.num_eval, self.eval_seed, self.name = seed, int(num_eval), eval_seed, name
    self._sequences = exact.all_sequences(self.vocab_size, self.seq_len)  # [V^N, N]

  def sample(self, rng: np.random.Generator, num: int) -> np.ndarray:
    """``num`` i.i.d. sequences, int32 [num, N]."""
    rows = rng.choice(len(self.probs), size=num, p=self.probs)
    return self._sequences[rows]

  def train_batch(self, step: int, batch_size: int, rows: slice | None = None) -> base.Batch:
    """{"x0": int32 [B, N]}, i.i.d. from the table, a pure function of (seed, step);
    with ``rows``, those rows of it."""
    rows = base.row_range(rows, batch_size)
    return {"x0": self.sample(base.rng_for_step(self.seed, step), batch_size)[rows]}

  def eval_samples(self) -> np.ndarray:
    """The fixed evaluation set, int32 [num_eval, N]."""
    return self.sample(base.rng_for_step(self.eval_seed, EVAL_STEP), self.num_eval)

  def eval_batches(self, batch_size: int, rows: slice | None = None) -> Iterator[base.Batch]:
    """The evaluation set in order: {"x0": int32 [B, N], "weight": float32 [B, N]};
    the last batch is padded with rows of token 0 and weight 0; with ``rows``,
    those rows of each batch."""
    rows = base.row_range(rows, batch_size)
    samples = self.eval_samples()
    for start in range(0, len(samples), batch_size):
      x0 = samples[start:start + batch_size]
      real = len(x0)
      weight = np.ones((batch_size, self.seq_len), np.float32)
      weight[real:] = 0.0
      x0 = np.concatenate([x0, np.zeros((batch_size - real, self.seq_len), np.int32)])
      yield {"x0": x0[rows], "weight": weight[rows]}

  def score_samples(self, draw, key, eval_config, figure_path=None) -> dict:
    """``eval_config.num_samples`` unconditional samples drawn in batches of
    ``eval_config.batch_size``: ``synthetic_metrics`` (accuracy, KL, TV), the
    calls made and, for 2-token joints with ``figure_path``, a PNG of the joint."""
    import jax
    chunks, calls = [], []
    for i in range(0, eval_config.num_samples, eval_config.batch_size):
      rows = min(eval_config.batch_size, eval_config.num_samples - i)
      x_init = np.full((rows, self.seq_len), self.vocab_size, np.int32)
      x, n = draw(jax.random.fold_in(key, i), x_init)
      chunks.append(np.asarray(x))
      calls.append(int(n))
    samples = np.concatenate(chunks)
    if figure_path is not None and self.seq_len == 2:
      save_joint_figure(self.probs, samples, self.vocab_size, figure_path,
                        title=epath.Path(figure_path).stem)
    return {**synthetic_metrics(self.probs, samples, self.vocab_size), "nfe": max(calls),
            "num_samples": len(samples)}


def from_npy(path: str | os.PathLike, vocab_size: int = 0, seq_len: int = 0, seed: int = 0,
             **kwargs) -> ProbabilityTable:
  """A table from a ``.npy`` file holding float (V,)*N (V and N read from its
  shape) or [V^N] (then ``vocab_size`` and ``seq_len`` must be given); kwargs go
  to ``ProbabilityTable``. Missing file -> FileNotFoundError; bad contents ->
  ValueError naming the file."""
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"probability table not found: {path}")
  with path.open("rb") as f:
    if f.read(6) != b"\x93NUMPY":  # numpy's own message suggests unpickling it
      raise ValueError(f"{path}: not a .npy table (no numpy header; write one with "
                       "numpy.save)")
    f.seek(0)
    try:
      probs = np.load(f, allow_pickle=False)
    except ValueError:
      raise ValueError(f"{path}: not a .npy table of numbers (it holds Python "
                       "objects)") from None
  if not (vocab_size and seq_len):
    if probs.ndim < 2 or len(set(probs.shape)) != 1:
      raise ValueError(f"{path}: a table of shape {probs.shape} needs config.data.vocab_size "
                       "and config.data.seq_len (or save it with shape (V,) * N)")
    vocab_size, seq_len = probs.shape[0], probs.ndim
  kwargs.setdefault("name", str(path))
  return ProbabilityTable(probs, vocab_size, seq_len, seed=seed, **kwargs)


def table_from_support(support, weights, vocab_size: int) -> np.ndarray:
  """The joint with mass proportional to ``weights`` [S] on ``support`` int [S, N], [V^N]."""
  support = np.asarray(support)
  probs = np.zeros(vocab_size ** support.shape[-1])
  np.add.at(probs, np.asarray(exact.sequence_index(support, vocab_size)), weights)
  return probs / probs.sum()


def two_token_uniform_probs() -> np.ndarray:
  """P(k, k+1 mod 10) = 1/10, [100]."""
  k = np.arange(10)
  return table_from_support(np.stack([k, (k + 1) % 10], -1), np.ones(10), 10)


def two_token_nonuniform_probs() -> np.ndarray:
  """P(k, k+1 mod 10) = (k+1)/55, [100]."""
  k = np.arange(10)
  return table_from_support(np.stack([k, (k + 1) % 10], -1), (k + 1) / 55.0, 10)


def d1_probs() -> np.ndarray:
  """D1: P(k, k+1, k+2, k+3 mod 10) = 1/10, [10^4]."""
  k = np.arange(10)
  return table_from_support((k[:, None] + np.arange(4)) % 10, np.ones(10), 10)


def d2_probs() -> np.ndarray:
  """D2: P(k, k+1, l, l+1 mod 10) = 1/100, [10^4]."""
  k, l = (a.ravel() for a in np.meshgrid(np.arange(10), np.arange(10), indexing="ij"))
  support = np.stack([k, k + 1, l, l + 1], -1) % 10
  return table_from_support(support, np.ones(100), 10)


class SyntheticSpec(NamedTuple):
  vocab_size: int
  seq_len: int
  probs_fn: Callable[[], np.ndarray]


SYNTHETIC: dict[str, SyntheticSpec] = {
    "two_token_uniform": SyntheticSpec(10, 2, two_token_uniform_probs),
    "two_token_nonuniform": SyntheticSpec(10, 2, two_token_nonuniform_probs),
    "d1": SyntheticSpec(10, 4, d1_probs),
    "d2": SyntheticSpec(10, 4, d2_probs),
}


def get_synthetic(name: str, seed: int = 0, **kwargs) -> ProbabilityTable:
  """The named table of ``SYNTHETIC``; kwargs go to ``ProbabilityTable``."""
  if name not in SYNTHETIC:
    raise ValueError(f"unknown synthetic dataset {name!r}; known: {sorted(SYNTHETIC)}")
  spec = SYNTHETIC[name]
  return ProbabilityTable(spec.probs_fn(), spec.vocab_size, spec.seq_len, seed=seed, name=name,
                          **kwargs)


def synthetic_metrics(probs, samples, vocab_size: int, kl_floor: float = KL_FLOOR) -> dict:
  """The paper's metrics of ``samples`` int [S, N] against the joint ``probs`` [V^N].

  accuracy = (1/S) sum_s [p(x_s) > 0];
  kl = KL(p || q) = sum_{x: p(x)>0} p(x) log(p(x) / max(q(x), kl_floor)) in nats,
    q the empirical distribution of the samples (see KL_FLOOR for the floor);
  tv = sum_x |p(x) - q(x)| / 2.
  """
  samples = np.asarray(samples)
  probs = np.asarray(probs, np.float64).ravel()
  if samples.ndim != 2 or vocab_size ** samples.shape[1] != probs.size:
    raise ValueError(f"samples must be [S, N] with V^N = {probs.size} (V={vocab_size}), "
                     f"got shape {samples.shape}")
  if samples.size and (samples.min() < 0 or samples.max() >= vocab_size):
    raise ValueError(f"samples must be tokens in [0, {vocab_size}), got range "
                     f"[{samples.min()}, {samples.max()}] (leftover masks?)")
  empirical = exact.empirical_distribution(samples, vocab_size)
  in_support = probs[np.asarray(exact.sequence_index(samples, vocab_size))] > 0
  return {"accuracy": float(np.mean(in_support)),
          "kl": exact.kl_divergence(probs, empirical, floor=kl_floor),
          "tv": exact.total_variation(probs, empirical)}


def save_joint_figure(probs, samples, vocab_size: int, path: str | os.PathLike,
                      title: str = "") -> None:
  """A PNG of two heatmaps for a 2-token joint: p(x^1, x^2) and the samples' histogram.

  Rows are the first token, columns the second. Written atomically.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  probs = np.asarray(probs, np.float64).ravel()
  if probs.size != vocab_size**2:
    raise ValueError(f"save_joint_figure needs a 2-token joint of size {vocab_size**2}, "
                     f"got size {probs.size}")
  true = probs.reshape(vocab_size, vocab_size)
  sampled = exact.empirical_distribution(np.asarray(samples), vocab_size).reshape(true.shape)
  fig = Figure(figsize=(8, 3.8))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2)
  vmax = max(true.max(), sampled.max())
  for ax, joint, label in ((axes[0], true, "true joint"),
                           (axes[1], sampled, f"samples (n={len(samples)})")):
    image = ax.imshow(joint, cmap="viridis", vmin=0.0, vmax=vmax, origin="upper")
    ax.set_title(label)
    ax.set_xlabel("token 2")
    ax.set_ylabel("token 1")
    ax.set_xticks(range(vocab_size))
    ax.set_yticks(range(vocab_size))
  fig.colorbar(image, ax=list(axes), shrink=0.85, label="probability")
  if title:
    fig.suptitle(title)
  path = epath.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with tmp.open("wb") as f:
    fig.savefig(f, format="png", dpi=100)
  tmp.replace(path)  # atomic on a local disk: a reader sees the old figure or the new one


# The fields of ``config.data.synthetic`` that hold local paths.
PATH_FIELDS = ("npy_path",)


def default_config() -> ml_collections.ConfigDict:
  """``config.data.synthetic``: a named table or a table in a .npy file."""
  c = ml_collections.ConfigDict()
  c.table = "d1"        # a named table (SYNTHETIC) ...
  c.npy_path = ""       # ... or a probability table in a .npy file (V and N:
                        # config.data.vocab_size / seq_len, or its shape)
  return c


def check_config(data_config, in_use: bool) -> None:
  """Nothing to check before the table is read (``get_synthetic`` and
  ``from_npy`` name a bad table)."""
  del data_config, in_use


def from_config(data_config, seed: int) -> ProbabilityTable:
  """The registry entry: ``data.synthetic.npy_path`` (a table file) or the named
  table ``data.synthetic.table``; ``data.num_eval`` evaluation sequences (0: the
  default)."""
  s = data_config.synthetic
  kwargs = {"num_eval": data_config.num_eval} if data_config.num_eval else {}
  if s.npy_path:
    return from_npy(s.npy_path, data_config.vocab_size, data_config.seq_len,
                    seed=seed, **kwargs)
  return get_synthetic(s.table, seed=seed, **kwargs)


def use_eval_file(data_config, path: str, needs_train: bool) -> None:
  """Points ``data_config`` at the .npy table ``path`` (V and N from its shape)."""
  del needs_train  # one table serves both
  data_config.synthetic.npy_path = path
  data_config.vocab_size, data_config.seq_len = 0, 0


def render(tokens) -> str:
  """A synthetic sequence as its tokens, e.g. ``3 4 5 6``."""
  return " ".join(str(int(v)) for v in np.asarray(tokens).ravel())
