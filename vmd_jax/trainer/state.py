"""The train state and the optimizer that updates it.

``TrainState`` holds the step, the parameters, the optimizer state and the EMA
parameters (what evaluation and sampling use). ``make_optimizer`` is AdamW with
linear warmup, cosine decay, global-norm clipping and weight decay on matrices.
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


def make_optimizer(tc) -> optax.GradientTransformation:
  """AdamW with linear warmup and cosine decay, global-norm clipping, and weight
  decay on matrices only (not on biases, norms or scalars); ``tc`` = config.train."""
  lr = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.lr, warmup_steps=tc.warmup_steps,
      decay_steps=max(tc.num_steps, tc.warmup_steps + 1), end_value=tc.lr * tc.end_lr_factor)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.adamw(lr, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay, mask=decay_mask)
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
