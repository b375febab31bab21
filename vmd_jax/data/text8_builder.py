"""text8 as a tensorflow-datasets builder (needs ``vmd_jax[text8]``).

text8 (Mahoney, http://mattmahoney.net/dc/textdata.html) is the first 10^8
characters of English Wikipedia filtered to a..z and space. Standard split
(md4, D3PM, SEDD): characters [0, 90M) train, [90M, 95M) validation,
[95M, 100M) test. Tokens: a..z -> 0..25, space -> 26; mask 27.

Builder ``Text8`` (tfds name "text8"), two kinds of config:
  * "text8" (default): the real text8, read from the first of
      1. ``local_path`` (builder kwarg): a file ``text8``, a ``text8.zip``, or a
         directory holding one of them; the network is never tried;
      2. the tfds manual dir (``DownloadConfig(manual_dir=...)``, default
         ``<data_dir>/downloads/manual``) holding ``text8`` or ``text8.zip``;
      3. a download of ``TEXT8_URL`` (unless ``allow_download=False``), checked by
         tfds against ``TEXT8_ZIP_SIZE`` and ``TEXT8_ZIP_SHA256``.
    Whatever the source, the unzipped text must have 100,000,000 characters,
    all in the alphabet, and md5 ``TEXT8_TEXT_MD5``.
  * a local-text config made by ``local_text_config(path)``: a text file, or a
    directory of text files (sorted by path, joined by a space), normalised with
    ``text_normalize.normalize_text`` (or, with ``normalize=False``, checked to
    be in the alphabet already: ``ValueError`` naming the file and offset), then
    split 90% / 5% / 5% by ``split_bounds``. Runs fully offline.

Stored format, per split: examples ``{"index": int64, "text": str}``; example k
holds characters [k*chunk, (k+1)*chunk) of the split (``chunk_chars``, 1M for
text8), so ``load_split`` sorts by index and concatenates. The character count
of each split is kept in ``info.metadata["split_chars"]`` and checked on load.

A failed prepare (missing file, bad character, bad checksum) removes the
directories it created under ``data_dir``, but never one holding a prepared
dataset (its ``dataset_info.json``: another process sharing the data dir may
have just finished it) or another writer's unfinished one (tfds's
``*.incomplete*``), nor a downloads folder holding a downloaded file (tfds's
download cache).
Several processes sharing a data dir should still prepare on one of them only
(``multihost.prepare_on_first_process``, as ``text8.from_config`` does).

Paths may be local or remote (``gs://``): they go through ``etils.epath``.

Checksums: the sha256 of text8.zip and the md5 of the unzipped text are the
values published alongside ``TEXT8_URL`` in several independent public
repositories (found with a code search, e.g. Haskell and TensorFlow word2vec
loaders pinning the zip's sha256; several text8 loaders pinning the text's
md5). They were not recomputed here: this machine has no copy of text8.

Usage:
  builder = prepare_text8("/data/tfds", local_path="~/Downloads/text8.zip")
  builder = prepare_local_text("book.txt", "/tmp/tfds")
  ds = Text8Dataset.from_builder(builder, seq_len=256, seed=0)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.download import checksums as tfds_checksums
from tensorflow_datasets.core.download.download_manager import NonMatchingChecksumError

from vmd_jax.data import text_normalize as tn
from vmd_jax.data.paths import as_path
from vmd_jax.data.text_sources import (_HOW_TO_GET_TEXT8, SPLITS, TEXT8_URL, TEXT8_ZIP_SHA256,
                                       TEXT8_ZIP_SIZE, _find_text8, read_local_text,
                                       read_text8, split_bounds)


@dataclasses.dataclass(eq=False)
class Text8Config(tfds.core.BuilderConfig):
  """A ``Text8`` config.

  Attributes:
    text_path: None for the real text8; else a text file or a directory of text
      files to use instead.
    normalize: (local text only) normalise with ``normalize_text``; if False the
      text must already be in text8's alphabet.
    chunk_chars: characters per stored example.
  """
  text_path: str | None = None
  normalize: bool = True
  chunk_chars: int = 1_000_000


def local_text_config(path: str | os.PathLike, *, normalize: bool = True,
                      chunk_chars: int = 1_000_000,
                      name: str | None = None) -> Text8Config:
  """A ``Text8Config`` for local text at ``path`` (a file or a directory).

  The default name, ``local_<stem>_<hash>``, hashes the absolute path and the
  options, so different texts get different dataset directories. A changed file
  at the same path is not detected: delete its directory or pass a new name.
  """
  path = os.fspath(as_path(path))
  if name is None:
    stem = re.sub(r"[^a-z0-9]+", "_", path.rstrip("/").rsplit("/", 1)[-1].lower()).strip("_")
    digest = hashlib.sha1(
        f"{path}|{normalize}|{chunk_chars}".encode()).hexdigest()[:8]
    name = f"local_{stem or 'text'}_{digest}"
  return Text8Config(
      name=name, text_path=path, normalize=normalize, chunk_chars=chunk_chars,
      description=f"Local text from {path} (normalize={normalize}), split 90/5/5.")


class Text8(tfds.core.GeneratorBasedBuilder):
  """text8, or local text in text8's format; see the module docstring.

  Args (besides tfds's ``data_dir``, ``config``, ``version``):
    local_path: (config "text8") ``text8``, ``text8.zip`` or a directory with
      one of them; when given, nothing else is tried.
    allow_download: (config "text8") download ``TEXT8_URL`` when neither
      ``local_path`` nor the manual dir has text8.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Splits of 90M/5M/5M characters in 1M-character chunks."}
  BUILDER_CONFIGS = [Text8Config(
      name="text8", description="Mahoney's text8, standard 90M/5M/5M split.")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Download {TEXT8_URL} and put text8.zip (or the unzipped text8) in the "
      f"manual dir.")
  # Checked by tfds's DownloadManager when it downloads TEXT8_URL. Set here, not
  # in a checksums.tsv next to the module.
  url_infos = {TEXT8_URL: tfds_checksums.UrlInfo(
      size=tfds.core.utils.Size(TEXT8_ZIP_SIZE), checksum=TEXT8_ZIP_SHA256,
      filename="text8.zip")}

  def __init__(self, *, local_path: str | os.PathLike | None = None,
               allow_download: bool = True, **kwargs):
    self._local_path = None if local_path is None else as_path(local_path)
    self._allow_download = allow_download
    self._manual_dir: epath.Path | None = None
    super().__init__(**kwargs)

  def download_and_prepare(self, *, download_dir=None, download_config=None,
                           **kwargs) -> None:
    """tfds's ``download_and_prepare``, removing what it created if it fails.

    ``download_config`` defaults to ``DownloadConfig(try_download_gcs=False)``.
    """
    download_config = download_config or tfds.download.DownloadConfig(
        try_download_gcs=False)
    downloads = epath.Path(download_dir or self.data_dir_root / "downloads")
    self._manual_dir = epath.Path(download_config.manual_dir or downloads / "manual")
    if not self.data_path.exists():
      self._check_sources_exist()
    root = epath.Path(self.data_dir_root)
    dataset_dirs = [root / self.name, self.data_path.parent, self.data_path]
    created = [p for p in dataset_dirs if not p.exists()]
    created_root, created_downloads = not root.exists(), not downloads.exists()
    try:
      super().download_and_prepare(download_dir=download_dir,
                                   download_config=download_config, **kwargs)
    except BaseException:
      for path in reversed(created):  # innermost first
        _remove_unless_in_use(path)
      if created_downloads and downloads.exists() and not _holds_files(downloads):
        downloads.rmtree()  # downloaded files are kept, as a cache
      if created_root and root.exists() and not _holds_files(root):
        root.rmtree()
      raise

  def _check_sources_exist(self) -> None:
    """Fails fast, before anything is written, on a missing explicit path."""
    text_path = self.builder_config.text_path
    if text_path is not None and not epath.Path(text_path).exists():
      raise FileNotFoundError(
          f"local text {text_path} not found: pass the path of a text file or "
          f"of a directory of text files to local_text_config.")
    if self._local_path is not None and not self._local_path.exists():
      raise FileNotFoundError(
          f"text8 not found at local_path={self._local_path}. {_HOW_TO_GET_TEXT8}")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            "Character-level text in text8's alphabet (a-z and space), as "
            "chunks of each split: {'index': chunk number, 'text': chunk}."),
        features=tfds.features.FeaturesDict({
            "index": tfds.features.Scalar(np.int64),
            "text": tfds.features.Text(),
        }),
        homepage="http://mattmahoney.net/dc/textdata.html",
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    config = self.builder_config
    if config.text_path is None:
      data = self._text8_bytes(dl_manager)
    else:
      data = read_local_text(config.text_path, config.normalize).encode("ascii")
    if len(data) < 20:
      raise ValueError(
          f"text has {len(data)} characters; at least 20 are needed so that "
          f"each of the 90/5/5% splits is non-empty")
    bounds = split_bounds(len(data))
    self.info.metadata["split_chars"] = {k: e - s for k, (s, e) in bounds.items()}
    return {split: self._generate_examples(data[s:e], config.chunk_chars)
            for split, (s, e) in bounds.items()}

  def _generate_examples(self, data: bytes, chunk_chars: int):
    for k, start in enumerate(range(0, len(data), chunk_chars)):
      yield k, {"index": k,
                "text": data[start:start + chunk_chars].decode("ascii")}

  def _text8_bytes(self, dl_manager) -> bytes:
    """The verified text8 bytes from local_path, the manual dir, or a download."""
    if self._local_path is not None:
      found = _find_text8(self._local_path)
      if found is None:
        raise FileNotFoundError(
            f"no text8 or text8.zip in local_path={self._local_path}. "
            f"{_HOW_TO_GET_TEXT8}")
      return read_text8(found)
    found = _find_text8(self._manual_dir) if self._manual_dir else None
    if found is not None:
      return read_text8(found)
    if not self._allow_download:
      raise FileNotFoundError(
          f"no text8 or text8.zip in the manual dir {self._manual_dir} and "
          f"allow_download=False. {_HOW_TO_GET_TEXT8}")
    try:
      path = dl_manager.download(TEXT8_URL)
    except NonMatchingChecksumError:
      raise
    except Exception as e:  # no network, server gone, ...
      raise FileNotFoundError(
          f"text8 is not in the manual dir {self._manual_dir} and downloading "
          f"{TEXT8_URL} failed ({type(e).__name__}: {e}). {_HOW_TO_GET_TEXT8}"
      ) from e
    return read_text8(epath.Path(path))


def _holds_files(path: epath.Path) -> bool:
  return any(files for _, _, files in path.walk())


def _remove_unless_in_use(path: epath.Path) -> None:
  """Removes the directory ``path`` unless it holds a prepared dataset (tfds
  writes ``dataset_info.json`` last) or another writer's unfinished one (tfds's
  ``*.incomplete*`` directories; a failed prepare has removed its own already)."""
  if not path.is_dir():
    return
  for _, dirs, files in path.walk():
    if "dataset_info.json" in files or any(".incomplete" in d for d in dirs):
      return
  path.rmtree()


def prepare_text8(data_dir: str | os.PathLike, *,
                  local_path: str | os.PathLike | None = None,
                  manual_dir: str | os.PathLike | None = None,
                  allow_download: bool = True) -> Text8:
  """Prepares (once) and returns the real text8 builder under ``data_dir``."""
  builder = Text8(data_dir=os.fspath(data_dir), config="text8",
                  local_path=local_path, allow_download=allow_download)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder


def prepare_local_text(path: str | os.PathLike, data_dir: str | os.PathLike, *,
                       normalize: bool = True, chunk_chars: int = 1_000_000,
                       name: str | None = None) -> Text8:
  """Prepares (once) and returns a builder of local text under ``data_dir``."""
  config = local_text_config(path, normalize=normalize, chunk_chars=chunk_chars,
                             name=name)
  builder = Text8(data_dir=os.fspath(data_dir), config=config)
  builder.download_and_prepare()
  return builder


def load_split(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
  """uint8 [num_chars] tokens of one prepared split, chunks reassembled in order."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  chunks = sorted(
      (int(ex["index"]), ex["text"]) for ex in
      tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  indices = [k for k, _ in chunks]
  if indices != list(range(len(chunks))):
    raise ValueError(f"{builder.data_dir} {split}: chunk indices {indices[:10]}... "
                     f"are not 0..{len(chunks) - 1}")
  tokens = tn.encode_bytes(b"".join(text for _, text in chunks))
  expected = builder.info.metadata.get("split_chars", {}).get(split)
  if expected is not None and len(tokens) != expected:
    raise ValueError(f"{builder.data_dir} {split}: {len(tokens)} characters, "
                     f"expected {expected}")
  return tokens
