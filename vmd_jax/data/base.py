"""The interface every dataset implements.

Training batches are a pure function of (seed, step): a run resumed from a
checkpoint at step k sees exactly the batches an uninterrupted run sees, with
no iterator state to save. Evaluation batches cover the evaluation split once,
in order; padding (rows or tokens) carries weight 0.

Multi-host: ``rows=slice(lo, hi)`` asks for rows [lo, hi) of every batch only,
with exactly the values those rows have in the whole batch, so each process
builds only its share of a global batch (the cheap random draws, e.g. window
starts, are made for the whole batch; the rows' tokens only for [lo, hi)).
"""

from __future__ import annotations

import abc
from typing import Iterator

import numpy as np

Batch = dict[str, np.ndarray]


class Dataset(abc.ABC):
  """Sequences of ``seq_len`` tokens in [0, vocab_size); the mask id is vocab_size.

  Batches are dicts of numpy arrays:
    ``x0``: int32 [B, N] clean tokens;
    ``weight``: float32 [B, N] token weights (1 real, 0 padding or already
      counted); train batches may omit it (all ones);
    optional ``given``: bool [B, N], positions fixed at sampling time (a prompt,
      a Sudoku's givens).
  """

  vocab_size: int
  seq_len: int

  @abc.abstractmethod
  def train_batch(self, step: int, batch_size: int, rows: slice | None = None) -> Batch:
    """The training batch of ``step``, deterministic in (the dataset's seed, step);
    with ``rows``, only those rows of it (``row_range``)."""

  @abc.abstractmethod
  def eval_batches(self, batch_size: int, rows: slice | None = None) -> Iterator[Batch]:
    """The evaluation split once, in fixed order; every batch has ``batch_size`` rows
    (with ``rows``: only those rows of each batch)."""

  @abc.abstractmethod
  def score_samples(self, draw, key, eval_config, figure_path=None) -> dict:
    """This dataset's measure of sample quality, as a JSON-ready dict.

    ``draw(key, x_init int [B, N]) -> (samples int [B, N], calls)`` generates the
    masked positions (mask id ``vocab_size``) of ``x_init``; ``eval_config`` is
    the run's ``config.eval`` (``num_samples``, ``batch_size``, ...);
    ``figure_path``: where a dataset that draws a figure of its samples puts it.
    """


def rng_for_step(seed: int, step: int) -> np.random.Generator:
  """An independent numpy generator for each (seed, step)."""
  return np.random.default_rng([seed, step])


def row_range(rows: slice | None, batch_size: int) -> slice:
  """``rows`` as ``slice(lo, hi)`` with 0 <= lo <= hi <= batch_size (None: every
  row); a step other than 1 or a range outside the batch is a ValueError."""
  if rows is None:
    return slice(0, batch_size)
  lo, hi, step = rows.indices(batch_size)
  if step != 1 or (rows.start or 0) < 0 or (rows.stop or 0) > batch_size or hi < lo:
    raise ValueError(f"rows={rows} is not a contiguous range of a batch of {batch_size} rows")
  return slice(lo, hi)
