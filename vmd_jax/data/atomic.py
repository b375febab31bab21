"""Atomic file writes: a reader sees the old file or the complete new one, never half.

The new contents go to a temporary file in the destination's directory (same
file system, so the rename is atomic), which ``os.replace`` moves over the
destination only after the writer finished without an exception. On failure the
temporary file is removed and the directory is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_write_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path to write; on normal exit it replaces ``path``.

  The temporary name keeps ``path``'s suffix, so writers that infer the format
  from the extension (matplotlib, ``np.save``) behave as for ``path`` itself.

    with atomic_write_path("fig.png") as tmp:
      figure.savefig(tmp)
  """
  path = Path(path)
  fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
  os.close(fd)
  tmp = Path(tmp_name)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json(path: str | os.PathLike, obj) -> None:
  """Writes ``obj`` as indented JSON, atomically."""
  import json
  with atomic_write_path(path) as tmp:
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
