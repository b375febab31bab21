"""TensorBoard summaries without TensorFlow: tensorboardX event files in the workdir.

Process 0 writes; the others write nothing (their steps are logged by ``train``).
``tensorboard --logdir=WORKDIR`` reads the files. A ``gs://`` workdir (any
non-local ``etils.epath`` path) is written through epath like every other file of
a run: an object store cannot append, so each flush rewrites the event file whole,
as tensorboardX's own GCS writer does.
"""

from __future__ import annotations

import io as _io
import json
import re
from typing import Any, Mapping

from tensorboardX import SummaryWriter as _TBXWriter, record_writer
from tensorboardX.summary import hparams as _hparams_summaries

from vmd_jax.trainer import io

HPARAM_TYPES = (bool, int, float, str)  # what TensorBoard's HParams plugin takes


def tag(name: str) -> str:
  """``name`` as a legal TensorBoard tag: any character but letters, digits and
  ``_ - / .`` becomes ``_`` (``eval/ancestral:64/nfe`` -> ``eval/ancestral_64/nfe``),
  as TensorBoard would do with a warning."""
  return re.sub(r"[^-/\w.]", "_", name)


class _EpathRecordFile:
  """The file object tensorboardX writes event records to, kept in memory and
  written whole through epath at each flush."""

  def __init__(self, path: str):
    self.path, self.buffer = io.as_path(path), _io.BytesIO()

  def write(self, data: bytes):
    self.buffer.write(data)

  def flush(self):
    self.path.write_bytes(self.buffer.getvalue())

  def close(self):
    self.flush()


class _EpathRecordFiles:
  """tensorboardX's writer factory (``record_writer.register_writer_factory``):
  its ``open`` takes a path and gives the file object."""

  open = staticmethod(_EpathRecordFile)

  def directory_check(self, path: str):
    io.as_path(path).mkdir(parents=True, exist_ok=True)


record_writer.register_writer_factory("gs", _EpathRecordFiles())


def hparam_values(flat: Mapping[str, Any]) -> dict[str, bool | int | float | str]:
  """A flat config as the HParams plugin takes it: other values (tuples, None) as JSON."""
  return {k: v if isinstance(v, HPARAM_TYPES) else json.dumps(v) for k, v in flat.items()}


class SummaryWriter:
  """Scalars, texts and the run's hyperparameters of one workdir (``active``:
  this process writes; the others' calls do nothing)."""

  def __init__(self, logdir: str, active: bool = True):
    self._writer = _TBXWriter(str(logdir), flush_secs=30) if active else None

  def write_scalars(self, step: int, scalars: Mapping[str, float]):
    if self._writer is not None:
      for name, value in scalars.items():
        self._writer.add_scalar(tag(name), float(value), global_step=int(step))

  def write_texts(self, step: int, texts: Mapping[str, str]):
    if self._writer is not None:
      for name, text in texts.items():
        self._writer.add_text(tag(name), text, global_step=int(step))

  def write_hparams(self, flat_config: Mapping[str, Any]):
    """The config as TensorBoard hyperparameters (no metrics attached)."""
    if self._writer is not None:
      for summary in _hparams_summaries(hparam_values(flat_config), {}):
        self._writer.file_writer.add_summary(summary)

  def flush(self):
    if self._writer is not None:
      self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()
