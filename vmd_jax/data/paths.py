"""Paths of data and runs, local or remote, as ``etils.epath.Path``.

Every data file, data dir and workdir goes through ``as_path``: a local path is
expanded (``~``) and made absolute, a URL (``gs://bucket/dir``) is kept as it is,
so the same code reads a laptop's folder and a bucket.
"""

from __future__ import annotations

import os

from etils import epath


def as_path(path: str | os.PathLike) -> epath.Path:
  """``path`` as an ``epath.Path``: local paths expanded and absolute, URLs kept."""
  text = os.fspath(path)
  if "://" in text:
    return epath.Path(text)
  return epath.Path(os.path.abspath(os.path.expanduser(text)))
