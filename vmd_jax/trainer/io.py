"""Files of a run: atomic writes and JSON, on local disks and ``gs://`` alike.

Every path goes through ``etils.epath``, so a workdir may be a local folder or a
bucket. A write goes to a temporary name beside the destination and is renamed
over it when complete: a reader sees the old file or the whole new one (atomic
on a local file system; on object stores each object is whole anyway). Files get
the ordinary permissions of the process's umask (0644 by default).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import Iterator

from etils import epath

from vmd_jax.data import paths


@contextlib.contextmanager
def atomic_write_path(path) -> Iterator[epath.Path]:
  """Yields a temporary path beside ``path`` to write; on normal exit it replaces
  ``path``, on an exception it is removed. The temporary name keeps ``path``'s
  suffix, so writers that infer the format from it (``np.savez``) behave alike.

    with atomic_write_path(workdir / "fig.png") as tmp:
      figure.savefig(tmp)
  """
  path = epath.Path(path)
  tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
  try:
    yield tmp
    tmp.replace(path)
  except BaseException:
    if tmp.exists():
      tmp.unlink()
    raise


def write_text(path, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  with atomic_write_path(path) as tmp:
    tmp.write_text(text)


def write_json(path, obj) -> None:
  """Writes ``obj`` as indented JSON, atomically. NaN and infinity are refused
  (``ValueError``): they are not JSON, and a metric that is not finite is a
  failure to report, not a number to write."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False))


def read_json(path):
  """The JSON object in ``path``; FileNotFoundError names the path."""
  path = epath.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{path} not found")
  return json.loads(path.read_text())


as_path = paths.as_path  # local paths expanded and absolute, URLs (gs://...) kept
