"""``vmd-jax sample``: samples of a trained run, rendered as text.

Decoded text for text8, grids for Sudoku (solving the first ``num`` puzzles of
a CSV with ``puzzles``, else unconditional), token sequences for synthetic data.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax import data
from vmd_jax.trainer import evaluate, io
from vmd_jax.trainer.load import load


def sample_workdir(workdir, *, num: int = 16, steps: int = 0, order: str = "ancestral",
                   seed: int = 0, prior: str = "standard_normal", temperature: float = 1.0,
                   puzzles: str | None = None) -> str:
  """``num`` samples of the run in ``workdir`` with ``steps`` network calls
  (0: one per position) in ``order``, one rendered sample per paragraph."""
  model, params, config = load(workdir)
  seq_len = io.read_json(io.as_path(workdir) / "data_shape.json")["seq_len"]
  x_init = np.full((num, seq_len), model.vocab_size, np.int32)
  if puzzles:
    from vmd_jax.data import sudoku
    grids = sudoku.load_sudoku_csv(puzzles)
    if len(grids.puzzles) < num:
      raise ValueError(f"{puzzles} has {len(grids.puzzles)} puzzles, fewer than --num={num}")
    given = grids.puzzles[:num] != 0
    x_init = np.where(given, grids.puzzles[:num] - 1, model.vocab_size).astype(np.int32)
  sampler_prior = None
  if prior == "mixture":
    if model.encoder is None:
      raise ValueError("--prior=mixture needs a VMD run")
    path = io.as_path(workdir) / "prior.npz"
    if not path.exists():
      raise FileNotFoundError(f"{path} not found: the run fitted no mixture prior")
    sampler_prior = evaluate.fit_prior(model, params, None, config, workdir).sample
  steps = steps or seq_len
  draw = jax.jit(lambda params, key, x: model.sample(params, key, x, steps, order,
                                                      prior=sampler_prior,
                                                      temperature=temperature))
  samples, calls = draw(params, jax.random.key(seed), jnp.asarray(x_init))
  rendered = [data.render(config.data.name, row) for row in np.asarray(samples)]
  header = f"# {num} samples of {workdir}: order {order}, {int(calls)} network calls"
  return "\n\n".join([header] + rendered)
