"""Where text in text8's format comes from: the real corpus or any local text.

text8 (Mahoney, http://mattmahoney.net/dc/textdata.html) is the first 10^8
characters of English Wikipedia filtered to a..z and space. ``read_text8`` reads
and checks it (length, alphabet, md5) from ``text8`` or ``text8.zip``;
``read_local_text`` reads any text file or folder normalised to the alphabet;
``write_python_docs_text`` writes real prose every Python installation has.
No TensorFlow here: ``text8_builder`` turns these into a tfds dataset.

Checksums: the sha256 of text8.zip and the md5 of the unzipped text are the
values published alongside ``TEXT8_URL`` in several independent public
repositories. They were not recomputed here: our machines have no copy of text8.
"""

from __future__ import annotations

import hashlib
import os
import zipfile

from etils import epath

from vmd_jax.data import text_normalize as tn
from vmd_jax.data.paths import as_path

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_ZIP_SIZE = 31_344_016
TEXT8_ZIP_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
TEXT8_CHARS = 100_000_000
TEXT8_TEXT_MD5 = "3bea1919949baf155f99411df5fada7e"
SPLITS = ("train", "validation", "test")

_HOW_TO_GET_TEXT8 = (
    f"Provide text8 in one of these ways: download {TEXT8_URL} and pass its "
    f"path as local_path (prepare_text8(data_dir, local_path=...)); or put "
    f"text8.zip (or the unzipped text8) in the tfds manual dir "
    f"(DownloadConfig(manual_dir=...), default <data_dir>/downloads/manual); "
    f"or allow the builder to download it.")


def split_bounds(num_chars: int) -> dict[str, tuple[int, int]]:
  """[start, end) character ranges of train/validation/test: 90% / 5% / 5%.

  For text8 (10^8 characters) these are exactly [0, 90M), [90M, 95M), [95M, 100M).
  """
  train_end = num_chars * 90 // 100
  valid_end = num_chars * 95 // 100
  return {"train": (0, train_end), "validation": (train_end, valid_end),
          "test": (valid_end, num_chars)}


def _find_text8(path: epath.Path) -> epath.Path | None:
  """``path`` if it is a file, else ``path/text8`` or ``path/text8.zip``, else None."""
  if path.is_file():
    return path
  for name in ("text8", "text8.zip"):
    if (path / name).is_file():
      return path / name
  return None


def read_text8(path: str | os.PathLike) -> bytes:
  """The text8 bytes of ``path`` (text8 or a zip holding it), after checking them.

  Raises:
    ValueError: wrong length, a byte outside the alphabet, or a wrong md5.
  """
  path = epath.Path(path)
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      names = archive.namelist()
      if "text8" not in names:
        raise ValueError(f"{path}: zip holds {names[:5]}, not 'text8'")
      data = archive.read("text8")
  else:
    data = path.read_bytes()
  if len(data) != TEXT8_CHARS:
    raise ValueError(f"{path}: text8 has {len(data):,} characters, expected "
                     f"{TEXT8_CHARS:,}; is it a complete copy of {TEXT8_URL}?")
  try:
    tn.encode_bytes(data)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  md5 = hashlib.md5(data).hexdigest()
  if md5 != TEXT8_TEXT_MD5:
    raise ValueError(f"{path}: md5 of the text is {md5}, expected {TEXT8_TEXT_MD5}")
  return data


def text_files(path: str | os.PathLike) -> list[epath.Path]:
  """``[path]`` for a file; for a directory, its non-hidden files, recursively, sorted
  (local or ``gs://``)."""
  path = as_path(path)
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"local text {path} not found")
  files = []
  for folder, dirs, names in path.walk():
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    files += [folder / n for n in names if not n.startswith(".")]
  if not files:
    raise FileNotFoundError(f"no text files in directory {path}")
  return sorted(files, key=os.fspath)


def read_local_text(path: str | os.PathLike, normalize: bool = True) -> str:
  """The text of a file or directory, in text8's alphabet, files joined by a space.

  Files are read as UTF-8 (undecodable bytes become U+FFFD). With
  ``normalize=False`` each file must already be in the alphabet, else
  ``check_text8_alphabet`` raises ValueError naming the file and the offset.
  """
  texts = []
  for name in text_files(path):
    text = name.read_bytes().decode("utf-8", errors="replace")
    if normalize:
      text = tn.normalize_text(text)
    else:
      tn.check_text8_alphabet(text, source=os.fspath(name))
    if text:
      texts.append(text)
  return " ".join(texts)


PYTHON_DOCS = "python-docs"


def write_python_docs_text(path: str | os.PathLike) -> str:
  """Writes the English prose of Python's own documentation (``pydoc_data.topics``,
  about 0.39M characters once normalised) to ``path``, atomically: real text that
  every machine with Python has, for running text8 configs offline."""
  import pydoc_data.topics
  text = "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))
  path = epath.Path(path)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(text, encoding="utf-8")
  tmp.replace(path)  # atomic: a reader sees no file or the whole file
  return os.fspath(path)
