"""The forward (masking) process of masked diffusion.

q(x_t^n | x_0^n) = alpha(t) [x_t^n = x_0^n] + (1 - alpha(t)) [x_t^n = m],
independently for every position n, where the mask id m is the vocabulary size V
(tokens are 0..V-1). A position is masked when its uniform noise u^n satisfies
u^n >= alpha(t), so the caller can pass the noise explicitly and get an exact,
reproducible x_t.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np


def check_tokens(x, vocab_size: int, *, allow_mask: bool = False, name: str = "x"):
  """Raises ValueError if concrete tokens fall outside [0, V) (or [0, V] with masks).

  A no-op on traced values (inside jit), where values cannot be inspected; the
  data pipelines call it on every batch they load.
  """
  if isinstance(x, jax.core.Tracer):
    return
  x = np.asarray(x)
  if not np.issubdtype(x.dtype, np.integer):
    raise ValueError(f"{name} must hold integer tokens, got dtype {x.dtype}")
  hi = vocab_size if allow_mask else vocab_size - 1
  if x.size and (x.min() < 0 or x.max() > hi):
    bad = x[(x < 0) | (x > hi)].ravel()[:5]
    allowed = f"[0, {vocab_size}] (mask id {vocab_size})" if allow_mask else f"[0, {vocab_size - 1}]"
    raise ValueError(f"{name} holds tokens outside the vocabulary {allowed}: {bad.tolist()}")


def mask_tokens(x0, t, schedule, mask_id: int, *, key=None, noise=None):
  """Draws x_t ~ q(x_t | x_0): position n is masked iff noise[b, n] >= alpha(t_b).

  Args:
    x0: int [B, N] clean tokens in [0, mask_id).
    t: float [B] times in [0, 1].
    schedule: a ``Schedule``.
    mask_id: the mask token id (the vocabulary size V).
    key: PRNG key, used when ``noise`` is None.
    noise: optional float [B, N] uniforms in [0, 1).

  Returns:
    int [B, N] x_t, same dtype as x0.
  """
  chex.assert_rank(x0, 2)
  chex.assert_shape(t, (x0.shape[0],))
  if noise is None:
    if key is None:
      raise ValueError("mask_tokens needs a key or explicit noise")
    noise = jax.random.uniform(key, x0.shape)
  chex.assert_equal_shape([noise, x0])
  alpha = schedule.alpha(t)[:, None]
  return jnp.where(noise >= alpha, jnp.asarray(mask_id, x0.dtype), x0)
