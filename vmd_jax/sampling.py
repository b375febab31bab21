"""Samplers for masked diffusion: ancestral, first-hitting and confidence-ordered.

Pure JAX over a ``denoise_fn(x_t int [B, N], t float [B]) -> logits [B, N, V]``.
A position holding the mask id V is to be generated; every other position of
``x_init`` is given (a prompt, a Sudoku's givens) and never changes. For VMD,
draw z once per sequence and pass ``lambda x, t: denoise(x, t, z)``.

Orders (``sample(..., order=...)``):

ancestral
  md4's sampler on a time grid 1 = t_0 > ... > t_T = 0: from t to s each masked
  token is revealed with probability (alpha(s) - alpha(t)) / (1 - alpha(t)),
  its value drawn from softmax(logits / temperature) (optionally top-p). At the
  last step every remaining mask is drawn (md4 takes the argmax of the eps
  fraction that would be left; the difference is O(eps)).
first_hitting
  Exact continuous-time sampling (Zheng et al. 2024; BD3-LM's ``first_hitting``):
  with m tokens masked at time t, the next reveal time s solves
  1 - alpha(s) = (1 - alpha(t)) u^(1/m), u ~ U(0, 1) (the latest of m reveal
  times, each with CDF (1 - alpha(s)) / (1 - alpha(t))); one masked token, chosen
  uniformly, is revealed there. Exactly one call per masked token;
  ``num_steps`` is ignored.
top_prob, top_prob_margin, random
  ``num_steps`` calls; at step i the number of masks kept follows the schedule,
  floor(m (1 - alpha(s)) / (1 - alpha(t))) (an equal share per step under the
  linear schedule and grid), and the positions revealed are those with the
  highest max probability, the highest gap between the two most likely values
  (Kim et al. 2025), or random ones.

The loop runs under ``lax.fori_loop``; when no token changed at the last step
the previous logits are reused instead of calling the network (exact for a
denoiser that ignores t, as the optimal one does; ``reuse_logits=False`` turns
it off). The number of calls made is returned with ``return_nfe=True``. Wrap a
call in ``jax.jit`` (with ``num_steps`` and ``order`` static) to compile it whole.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp

from vmd_jax.forward import check_tokens, infer_vocab_size
from vmd_jax.schedules import time_grid

ORDERS = ("ancestral", "first_hitting", "top_prob", "top_prob_margin", "random")
CONFIDENCE_ORDERS = ("top_prob", "top_prob_margin", "random")


def top_p_logits(logits, top_p: float):
  """Nucleus filtering: keeps the smallest set of values whose probability sums
  to at least ``top_p`` and sets the other logits to -inf."""
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  kept = jnp.where(mass_before < top_p, sorted_logits, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def draw_tokens(key, logits, temperature: float = 1.0, top_p: float | None = None):
  """Draws a token per position from softmax(logits / temperature), [B, N].

  ``temperature = 0`` takes the argmax.
  """
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  if top_p is not None and top_p < 1.0:
    logits = top_p_logits(logits, top_p)
  return jax.random.categorical(key, logits, axis=-1)


def _confidence(logits, order, key):
  if order == "random":
    return jax.random.uniform(key, logits.shape[:-1])
  probs = jax.nn.softmax(logits, axis=-1)
  if order == "top_prob":
    return jnp.max(probs, axis=-1)
  top2 = jax.lax.top_k(probs, 2)[0]
  return top2[..., 0] - top2[..., 1]


def _reveal_top(scores, masked, num_reveal):
  """Boolean [B, N]: for each row the ``num_reveal[b]`` masked positions of
  highest score."""
  scores = jnp.where(masked, scores, -jnp.inf)
  order = jnp.argsort(-scores, axis=-1)
  rank = jnp.argsort(order, axis=-1)
  return masked & (rank < num_reveal[:, None])


def sample(denoise_fn: Callable, key, x_init, num_steps: int, schedule,
           order: str = "ancestral", *, vocab_size: int | None = None,
           temperature: float = 1.0, top_p: float | None = None,
           grid: str = "linear", reuse_logits: bool = True,
           return_nfe: bool = False):
  """Generates the masked positions of ``x_init``.

  Args:
    denoise_fn: ``(x_t, t [B]) -> logits [B, N, V]``.
    key: PRNG key.
    x_init: int [B, N]; the mask id V marks positions to generate, the others are
      kept as given.
    num_steps: steps (network calls at most) for every order but first_hitting.
    schedule: the ``Schedule`` the model was trained with.
    order: one of ``ORDERS``.
    vocab_size: V; inferred from the logits' shape when None.
    temperature: softmax temperature of the drawn values; 0 is greedy.
    top_p: nucleus threshold for the drawn values (None: off).
    grid: time grid, "linear" or "cosine" (``schedules.time_grid``).
    reuse_logits: skip the network when nothing changed at the last step.
    return_nfe: also return the number of network calls made (int32 scalar).

  Returns:
    int [B, N] samples, or (samples, nfe) with ``return_nfe``.
  """
  if order not in ORDERS:
    raise ValueError(f"unknown sampling order {order!r}; known orders: {list(ORDERS)}")
  chex.assert_rank(x_init, 2)
  batch_size, length = x_init.shape
  t_shape = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
  if vocab_size is None:
    vocab_size = infer_vocab_size(denoise_fn, x_init, t_shape)
  check_tokens(x_init, vocab_size, allow_mask=True, name="x_init")
  mask_id = vocab_size

  if order == "first_hitting":
    num_iters = length
    times = None
  else:
    num_iters = num_steps
    times = time_grid(num_steps, grid)

  def next_time(i, x, t_prev, key):
    """The time at which step i calls the network, [B]."""
    if times is not None:
      return jnp.full((batch_size,), times[i])
    num_masked = jnp.sum(x == mask_id, axis=-1)
    u = jax.random.uniform(key, (batch_size,))
    exponent = 1.0 / jnp.maximum(num_masked, 1)
    s = schedule.inverse(1.0 - (1.0 - schedule.alpha(t_prev)) * u**exponent)
    return jnp.where(num_masked > 0, s, t_prev)

  def update(i, x, logits, t, key):
    """x after step i, given the logits at time t."""
    masked = x == mask_id
    value_key, reveal_key = jax.random.split(key)
    values = draw_tokens(value_key, logits, temperature, top_p).astype(x.dtype)
    last = i == num_iters - 1
    if order == "first_hitting":
      scores = jax.random.uniform(reveal_key, x.shape)
      reveal = _reveal_top(scores, masked, jnp.ones((batch_size,), jnp.int32))
    elif order == "ancestral":
      alpha_t, alpha_s = schedule.alpha(times[i]), schedule.alpha(times[i + 1])
      p_reveal = jnp.where(last, 1.0, (alpha_s - alpha_t) / (1.0 - alpha_t))
      reveal = masked & (jax.random.uniform(reveal_key, x.shape) < p_reveal)
    else:
      num_masked = jnp.sum(masked, axis=-1)
      ratio = (1.0 - schedule.alpha(times[i + 1])) / (1.0 - schedule.alpha(times[i]))
      keep = jnp.floor(num_masked * ratio + 1e-6).astype(jnp.int32)  # 1e-6: round-off
      keep = jnp.where(last, 0, keep)
      scores = _confidence(logits, order, reveal_key)
      reveal = _reveal_top(scores, masked, num_masked - keep)
    return jnp.where(reveal, values, x)

  def body(i, carry):
    x, logits, changed, nfe, t_prev = carry
    time_key, step_key = jax.random.split(jax.random.fold_in(key, i))
    t = next_time(i, x, t_prev, time_key)
    call = changed if reuse_logits else jnp.bool_(True)
    logits = jax.lax.cond(
        call, lambda: denoise_fn(x, t).astype(jnp.float32), lambda: logits)
    x_new = update(i, x, logits, t, step_key)
    changed = jnp.any(x_new != x)
    return x_new, logits, changed, nfe + call.astype(jnp.int32), t

  init = (x_init,
          jnp.zeros((batch_size, length, vocab_size), jnp.float32),
          jnp.any(x_init == mask_id),
          jnp.int32(0),
          jnp.ones((batch_size,), jnp.float32))
  x, _, _, nfe, _ = jax.lax.fori_loop(0, num_iters, body, init)
  return (x, nfe) if return_nfe else x
