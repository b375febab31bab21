"""Stopping at the first non-finite loss or gradient norm, before it reaches the state.

``guard_step(train_step)`` wraps ``(state, x0) -> (state, metrics)`` into
``(state, x0, ok) -> (state, metrics, ok)`` with

    ok' = ok & isfinite(metrics["loss"]) & isfinite(metrics["grad_norm"])
    state' = train_step(state, x0)[0] if ok' else state

all inside the jitted step. ``ok`` is sticky, so once a step fails every later
step leaves the state alone: the state stays the last good one (finite, with
``state.step`` = the steps that succeeded) however late the host looks at
``ok``. The loop reads each step's ``ok`` one step late (no sync per step), and
at once before every save, so nothing non-finite is ever written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


class TrainingDiverged(RuntimeError):
  """A non-finite loss or gradient norm (exit code 1 on the command line)."""
  exit_code = 1


def guard_step(train_step):
  """The guarded step described in the module docstring; ``ok`` is a bool scalar."""

  def guarded(state, x0, ok):
    new_state, metrics = train_step(state, x0)
    ok = ok & jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
    state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
    return state, metrics, ok

  return guarded


def diverged_message(step: int, metrics: dict, last_good: str | None) -> str:
  """One line: the step, the offending values and the checkpoint to go back to."""
  values = ", ".join(f"{k} = {float(metrics[k]):g}" for k in ("loss", "grad_norm"))
  kept = (f"last good checkpoint: {last_good} (rerun, e.g. with a lower --config.train.lr, "
          "to resume from it)" if last_good else
          "no checkpoint was saved before it (e.g. lower --config.train.lr and start again)")
  return f"training diverged at step {step} ({values}); nothing after step {step - 1} " \
         f"was saved; {kept}"
