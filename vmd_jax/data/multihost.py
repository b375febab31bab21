"""Preparing data once when several processes share a data dir.

With ``jax.distributed`` every process runs the same program. Anything that
writes a shared data dir (tfds's ``download_and_prepare``) runs on process 0
alone; the others wait for it, then read what it wrote. A failure on process 0
is raised there and reported on every other process, so no process waits
forever and none starts preparing on its own.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np


def prepare_on_first_process(prepare: Callable[[], None], what: str) -> None:
  """Runs ``prepare()`` on process 0; every process returns only once it is done.

  The wait is ``multihost_utils.broadcast_one_to_all`` of process 0's outcome (a
  collective over every device, so also a barrier). One process: just ``prepare()``.
  """
  if jax.process_count() == 1:
    prepare()
    return
  from jax.experimental import multihost_utils
  error = None
  if jax.process_index() == 0:
    try:
      prepare()
    except Exception as e:  # reported to the other processes, then raised here
      error = e
  failed = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed:
    raise RuntimeError(f"{what} failed on process 0; its log names the cause")
