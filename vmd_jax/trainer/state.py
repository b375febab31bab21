"""The train state and the optimizer that updates it.

``TrainState`` holds the step, the parameters, the optimizer state and the EMA
parameters (what evaluation and sampling use). ``make_optimizer`` is AdamW with
linear warmup, cosine decay, global-norm clipping and weight decay on matrices;
GenMD4's learned exponents (``params["schedule"]``) may have their own peak
learning rate.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from vmd_jax.networks import MaskedDiffusion


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  ema_params: Any


def learning_rate(tc, peak_lr: float | None = None) -> optax.Schedule:
  """The rate of update ``count`` (0, 1, ...): 0 -> ``peak_lr`` (default
  ``tc.lr``) linearly over ``tc.warmup_steps``, then a cosine decay to
  ``peak_lr * tc.end_lr_factor`` at ``tc.num_steps``."""
  peak_lr = tc.lr if peak_lr is None else peak_lr
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=peak_lr, warmup_steps=tc.warmup_steps,
      decay_steps=max(tc.num_steps, tc.warmup_steps + 1), end_value=peak_lr * tc.end_lr_factor)


def _adamw(tc, peak_lr: float) -> optax.GradientTransformation:
  lr = learning_rate(tc, peak_lr)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.adamw(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask)


def _schedule_label(params):
  """'schedule' for the subtree ``params["schedule"]`` (GenMD4), 'network' elsewhere."""
  return {name: "schedule" if name == "schedule" else "network" for name in params}


def make_optimizer(tc) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, global-norm clipping, and weight
  decay on matrices only (not on biases, norms or scalars); ``tc`` = config.train.

  With ``tc.schedule_lr`` > 0, the subtree ``params["schedule"]`` (GenMD4's
  exponents) gets its own AdamW with that peak rate and the same warmup and decay
  (``optax.partition``); with 0 every parameter shares ``tc.lr``, as in md4.
  Clipping is over the global norm of all gradients.
  """
  adamw = _adamw(tc, tc.lr)
  if tc.get("schedule_lr", 0.0) > 0:
    adamw = optax.partition({"network": adamw, "schedule": _adamw(tc, tc.schedule_lr)},
                            _schedule_label)
  if tc.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw)
  return adamw


def init_state(model: MaskedDiffusion, tx, key, example_x0) -> TrainState:
  """Fresh parameters for inputs shaped like ``example_x0``; EMA = parameters."""
  params = model.init(key, example_x0)
  return TrainState(step=jnp.int32(0), params=params, opt_state=tx.init(params),
                    ema_params=params)


def ema_update(ema, params, step, decay: float):
  """EMA with a warmed-up decay min(d, (1 + step) / (10 + step)): early EMA
  tracks the parameters; ``decay = 0`` returns ``params``."""
  if decay <= 0:
    return params
  step = step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
