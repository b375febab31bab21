"""A trained model outside the trainer: ``load(workdir) -> (model, params, config)``.

>>> model, params, config = load("runs/table/vmd_d1")           # doctest: +SKIP
>>> x_init = jnp.full((4, 4), model.vocab_size)                  # doctest: +SKIP
>>> samples, calls = model.sample(params, jax.random.key(0), x_init, 4, "random")  # doctest: +SKIP

Only the EMA parameters are read (no optimizer state), from the newest
checkpoint whose EMA parameters read back whole and finite; ``params`` has the
layout ``MaskedDiffusion.init`` gives. A newer step that does not (truncated or
missing files, NaN) is skipped with one warning line naming it. Loading is
read-only: the bad step is left where it is, and nothing in the workdir is
created, moved or removed, so it is safe while a training run holds the workdir
(its next start moves the bad step to ``checkpoints_corrupt/``).
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax
from absl import logging
import ml_collections
import numpy as np

from vmd_jax.networks import MaskedDiffusion
from vmd_jax.trainer import build, checkpoint, io
from vmd_jax.trainer import config as config_lib

SHAPE_FILE = "data_shape.json"


class BadInput(ValueError):
  """An input a reader of a workdir cannot use (a flag's value, a data file);
  the message names it. ``vmd-jax evaluate`` / ``sample`` report it in one line."""


@contextlib.contextmanager
def bad_input(prefix: str = ""):
  """A ValueError inside (a check's refusal) raised as ``BadInput``, its message
  after ``prefix`` (the flag it concerns)."""
  try:
    yield
  except ValueError as e:
    raise BadInput(f"{prefix}{e}") from None


def write_data_shape(workdir, vocab_size: int, seq_len: int) -> None:
  """Records the dataset's V and N, so ``load`` needs no dataset."""
  io.write_json(io.as_path(workdir) / SHAPE_FILE, {"vocab_size": int(vocab_size),
                                                   "seq_len": int(seq_len)})


def load_config(workdir) -> ml_collections.ConfigDict:
  """The validated config a run in ``workdir`` was trained with; a field added to
  ``config.base_config`` after the run was made takes its default, and one moved
  since (``config.MOVED_KEYS``) is read under its new name."""
  path = io.as_path(workdir) / "config.json"
  if not path.exists():
    raise FileNotFoundError(f"{path} not found: is {workdir} a vmd_jax workdir?")
  config = config_lib.base_config()
  # recursive: the saved values over the defaults
  config.update(config_lib.migrate_saved(io.read_json(path)))
  return config_lib.validate(config)


def data_shape(workdir, config) -> tuple[int, int]:
  """(V, N) of the run's data: from ``data_shape.json``, or for a workdir from
  before that file, from the dataset ``config`` names."""
  shape_path = io.as_path(workdir) / SHAPE_FILE
  if shape_path.exists():
    shape = io.read_json(shape_path)
    return shape["vocab_size"], shape["seq_len"]
  dataset = build.build_dataset(config)
  return dataset.vocab_size, dataset.seq_len


class Run(NamedTuple):
  """What a workdir says of its run, read without touching a checkpoint."""
  config: ml_collections.ConfigDict
  model: MaskedDiffusion
  vocab_size: int
  seq_len: int


def open_run(workdir) -> Run:
  """The run's validated config, its model and (V, N); reads no checkpoint."""
  config = load_config(workdir)
  vocab_size, seq_len = data_shape(workdir, config)
  return Run(config, build.build_model(config, vocab_size, seq_len), vocab_size, seq_len)


def restore_ema(workdir, run: Run, step: int | None = None) -> tuple[dict, int]:
  """(EMA params, their step) of ``run``: of ``step``, or by default of the newest
  intact step. Raises ``checkpoint.CheckpointError`` as ``load`` does."""
  abstract = jax.eval_shape(run.model.init, jax.random.key(0),
                            np.zeros((1, run.seq_len), np.int32))
  ckpt = checkpoint.Checkpointer(io.as_path(workdir) / "checkpoints", read_only=True)
  try:
    if step is None:
      step, params = ckpt.restore_newest_intact_subtree("ema_params", abstract)
    else:
      params = ckpt.restore_subtree("ema_params", abstract, step)
  finally:
    ckpt.close()
  logging.info("Loaded the EMA parameters of step %d from %s", step, ckpt.directory)
  return params, step


def load(workdir, step: int | None = None) -> tuple[MaskedDiffusion, dict, ml_collections.ConfigDict]:
  """(model, EMA params, config) of a run: the EMA params of ``step``, or by
  default of the newest intact step (see the module docstring).

  Raises ``checkpoint.CheckpointError`` in one line when ``step`` is missing,
  unreadable or not finite (an explicit step never falls back), or when no step
  of ``workdir`` is intact."""
  run = open_run(workdir)
  params, _ = restore_ema(workdir, run, step)
  return run.model, params, run.config
