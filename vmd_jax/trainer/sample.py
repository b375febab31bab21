"""``vmd-jax sample``: samples of a trained run, rendered as text.

Decoded text for text8, grids for Sudoku (solving the first ``num`` puzzles of
a CSV with ``puzzles``, else unconditional), token sequences for synthetic data.
Every argument is checked against the run before its checkpoint is read; one
the run cannot use raises ``load.BadInput`` naming it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax import data, sampling
from vmd_jax.networks.diffusion import standard_normal_prior
from vmd_jax.networks.variant import check_variant
from vmd_jax.trainer import evaluate, io
from vmd_jax.trainer.load import BadInput, Run, bad_input, open_run, restore_ema


def initial_tokens(workdir, run: Run, *, num: int, steps: int, order: str, prior: str,
                   puzzles: str | None) -> np.ndarray:
  """x_init int32 [num, N] for ``run``, the run in ``workdir`` (all masks, or the
  givens of the first ``num`` puzzles of ``puzzles``); raises ``BadInput`` for an
  argument the run cannot use. Reads the puzzles, no checkpoint."""
  if order not in sampling.ORDERS:
    raise BadInput(f"--order={order}: unknown sampling order; known orders: "
                   f"{list(sampling.ORDERS)}")
  config, model, vocab_size, seq_len = run
  with bad_input():
    check_variant(model.variant, seq_len=seq_len, orders=[(order, steps or seq_len)],
                  source="--order/--steps")
  if prior == "conditional" and model.prior_encoder is None:
    raise BadInput(f"--prior=conditional needs a run trained with prior.kind = "
                   f"'conditional'; {workdir} has prior.kind = {config.prior.kind!r}")
  if prior == "mixture" and model.encoder is None:
    raise BadInput(f"--prior=mixture needs a VMD run; {workdir} is a "
                   f"{config.model.kind!r} run")
  if prior == "mixture" and not (io.as_path(workdir) / "prior.npz").exists():
    raise FileNotFoundError(f"{io.as_path(workdir) / 'prior.npz'} not found: the run "
                            "fitted no mixture prior")
  if not puzzles:
    return np.full((num, seq_len), vocab_size, np.int32)
  prompt_tokens = data.hook(config.data.name, "prompt_tokens")
  if prompt_tokens is None:
    raise BadInput(f"--puzzles needs a Sudoku run; {workdir} is a "
                   f"{config.data.name!r} run")
  with bad_input("--puzzles: "):  # a malformed file (SudokuDataError)
    x_init = prompt_tokens(puzzles, vocab_size)
  if len(x_init) < num:
    raise BadInput(f"--puzzles={puzzles} has {len(x_init)} puzzles, fewer than "
                   f"--num={num}")
  return x_init[:num]


def sample_workdir(workdir, *, num: int = 16, steps: int = 0, order: str = "ancestral",
                   seed: int = 0, prior: str = "run", temperature: float = 1.0,
                   puzzles: str | None = None) -> str:
  """``num`` samples of the run in ``workdir`` with ``steps`` network calls
  (0: one per position) in ``order``, one rendered sample per paragraph. VMD's
  ``prior``: "run" (the one it trained with: its conditional prior, else N(0, I)),
  "standard_normal", "mixture" or "conditional"."""
  with bad_input(f"--temperature={temperature}: "):
    sampling.check_temperature(temperature)
  run = open_run(workdir)
  x_init = initial_tokens(workdir, run, num=num, steps=steps, order=order, prior=prior,
                          puzzles=puzzles)
  params, step = restore_ema(workdir, run)
  model, config = run.model, run.config
  sampler_prior = None  # the model's own: conditional where it has one, else N(0, I)
  if prior == "standard_normal" and model.prior_encoder is not None:
    sampler_prior = standard_normal_prior(model.latent_dim)
  if prior == "mixture":  # the run's prior.npz, or fitted again (not saved) if it is stale
    sampler_prior = evaluate.fit_prior(model, params, None, config, workdir, save=False,
                                       step=step).sample
  steps = steps or x_init.shape[1]
  draw = jax.jit(lambda params, key, x: model.sample(params, key, x, steps, order,
                                                      prior=sampler_prior,
                                                      temperature=temperature))
  samples, calls = draw(params, jax.random.key(seed), jnp.asarray(x_init))
  rendered = [data.render(config.data.name, row) for row in np.asarray(samples)]
  header = f"# {num} samples of {workdir}: order {order}, {int(calls)} network calls"
  return "\n\n".join([header] + rendered)
