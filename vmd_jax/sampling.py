"""Samplers for masked diffusion: ancestral, first-hitting and confidence-ordered.

Pure JAX over a ``denoise_fn(x_t int [B, N], t float [B]) -> logits [B, N, V]``.
A position holding the mask id V is to be generated; every other position of
``x_init`` is given (a prompt, a Sudoku's givens) and never changes. For VMD,
draw z once per sequence and pass ``lambda x, t: denoise(x, t, z)``.

Orders (``sample(..., order=...)``), on a time grid 1 = t_0 > ... > t_T = 0:

ancestral
  md4's sampler: step i (t_i -> t_{i+1}) reveals each masked token with
  probability (alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(t_i)), its value drawn
  from softmax(logits(x, t_i) / temperature) (optionally top-p). The last step
  reveals every remaining mask (md4 takes the argmax of the eps fraction that
  would be left; the difference is O(eps)).
first_hitting
  The continuous-time limit (Zheng et al. 2024; BD3-LM's ``first_hitting``):
  each masked token's reveal time tau has P(tau < s) = (1 - alpha(s)) /
  (1 - alpha(1)); tokens are revealed one per call, latest tau first, each from
  the logits at its own tau. ``num_steps`` is ignored.
top_prob, top_prob_margin, random
  Step i keeps floor(m (1 - alpha(t_{i+1})) / (1 - alpha(t_i))) of the m masks,
  at most m - 1 (none at the last step) and reveals the others with the highest max
  probability, the highest gap between the two most likely values (Kim et al.
  2025), or at random.

Calls: ``skip_idle`` and NFE, for every sampler of the library (the one
definition; ``block.block_sample``, ``prime.sample``, ``prime.block_sample`` and
``genmd4.sample`` point here). NFE (``return_nfe=True``) is the number of denoiser
calls made, each on the whole batch (a block sampler's KV-cache prefill calls are
not counted). ``skip_idle=True``, the default, makes no call whose logits no
sequence uses: which positions a step reveals is decided before its call where
the sampler's plan does not depend on the logits, and a step at which no
sequence reveals anything is not called, which changes no sample for the same
key (exact for time-conditioned denoisers too). ``skip_idle=False`` is the
reference loop: a call per grid step. How each sampler meets it:

- here (and per block in ``block.block_sample``): every token's ancestral reveal
  step is drawn up front (``ancestral_reveal_steps``) and the loop moves each
  sequence straight to its own next reveal step, calling the network once for
  the whole batch, each sequence at its own time t [B]: at most min(T, L) calls
  (the most distinct reveal steps of any one sequence), whatever the batch size.
  False: a call per grid step until nothing is masked (md4's loop); the
  randomness is drawn per (sequence, step), so both give the same samples;
- ``prime.sample``: before each grid step, whether any sequence reveals a digit
  (``prime.reveals_any``); the step is skipped when none does, so NFE is the
  number of grid steps at which some sequence reveals. False: a call at each of
  the T steps, masks left or not;
- ``genmd4.sample``: which positions a step reveals depends on the logits, so
  only a step with nothing masked in the batch is known to be idle beforehand;
  it is always skipped (no ``skip_idle`` argument).

The confidence orders have no idle step to skip: floor(m r) < m for r < 1 (and
``confidence_reveal_counts`` keeps that where float32 rounds r to 1), so every
step reveals at least one token until none is left, and a sequence is done after
at most min(T, m) calls: exactly min(T, m), with T >= m one token per step at
t_0 .. t_{m-1}, unless a step's share is more than one token (polynomial k = 3
near t = 1; not the linear, cosine or loglinear schedule).
Their counts depend on m alone (``confidence_reveal_counts``), and a sequence
whose masks are all revealed stops being updated. First hitting makes one call
per masked token. ``return_nfe=True`` also returns the calls made (batch calls,
each on all B sequences). The loop is a ``lax.while_loop``; wrap a call in
``jax.jit`` (``num_steps``, ``order`` static).

Traced arguments. ``key``, the values of ``x_init``, ``temperature`` and ``top_p``
may be traced (``jax.jit`` arguments, ``jax.vmap`` over temperatures); the other
arguments are static (``num_steps``, ``order``, ``schedule``, ``grid``,
``vocab_size``, ``skip_idle``, ``return_nfe``, and shapes). A traced temperature
of 0 still takes the exact argmax, and a traced top_p >= 1 turns the nucleus
off, as the concrete values do. ``check_temperature`` and ``check_top_p`` check
traced values only under ``forward.checked`` (a ``checkify`` error, as for
tokens); elsewhere a traced top_p <= 0 or NaN keeps only the most likely value,
and a traced negative or NaN temperature is used as given. The same holds
for ``block.block_sample``, ``prime.sample``, ``prime.block_sample`` and
``genmd4.sample``.
"""

from __future__ import annotations

import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from jax.experimental import checkify

from vmd_jax.forward import (check_drawable, check_logits, check_tokens, checking, drawable,
                             infer_vocab_size, is_traced)
from vmd_jax.schedules import time_grid

ORDERS = ("ancestral", "first_hitting", "top_prob", "top_prob_margin", "random")


def check_top_p(top_p):
  """Raises ValueError unless ``top_p`` is None or in (0, 1] (NaN is not).
  A traced ``top_p`` is checked under ``forward.checked`` (a ``checkify``
  error), else it cannot be inspected and passes."""
  if top_p is None:
    return
  if is_traced(top_p):
    if checking():
      checkify.check((top_p > 0.0) & (top_p <= 1.0),
                     "top_p must be in (0, 1] or None (off), got {v}", v=top_p)
    return
  if not 0.0 < float(top_p) <= 1.0:
    raise ValueError(f"top_p must be in (0, 1] or None (off), got {top_p!r}")


def check_temperature(temperature):
  """Raises ValueError unless ``temperature`` is a finite number >= 0 (0 is
  greedy; a negative one would sample the inverted distribution, NaN token 0).
  A traced ``temperature`` is checked under ``forward.checked`` (a ``checkify``
  error), else it cannot be inspected and passes."""
  if is_traced(temperature):
    if checking():
      checkify.check(jnp.isfinite(temperature) & (temperature >= 0.0),
                     "temperature must be a finite number >= 0 (0: greedy), got {v}",
                     v=temperature)
    return
  if not (math.isfinite(float(temperature)) and float(temperature) >= 0.0):
    raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), "
                     f"got {temperature!r}")


def check_order(order: str):
  """Raises ValueError unless ``order`` is one of ``ORDERS``."""
  if order not in ORDERS:
    raise ValueError(f"unknown sampling order {order!r}; known orders: {list(ORDERS)}")


def check_settings(order: str | None, temperature, top_p):
  """The samplers' shared argument checks: ``check_order`` (None: the sampler
  has one order), ``check_temperature`` and ``check_top_p``."""
  if order is not None:
    check_order(order)
  check_temperature(temperature)
  check_top_p(top_p)


def top_p_logits(logits, top_p: float):
  """Nucleus filtering: keeps the smallest set of values whose probability sums
  to at least ``top_p``, 0 < top_p <= 1, and sets the other logits to -inf. The
  most likely value is always kept (a traced top_p <= 0 or NaN keeps only it)."""
  check_top_p(top_p)
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  first = jnp.arange(logits.shape[-1]) == 0
  kept = jnp.where((mass_before < top_p) | first, sorted_logits, jnp.inf)
  threshold = jnp.min(kept, axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def nucleus_logits(logits, top_p):
  """``top_p_logits(logits, top_p)`` for top_p < 1, the logits unchanged for
  None or top_p >= 1. A traced ``top_p`` picks between the two with
  ``jnp.where`` (both computed)."""
  if top_p is None:
    return logits
  if is_traced(top_p):
    return jnp.where(top_p < 1.0, top_p_logits(logits, top_p), logits)
  return top_p_logits(logits, top_p) if top_p < 1.0 else logits


def tempered_logits(logits, temperature):
  """logits / temperature for temperature > 0 (a traced temperature of 0 divides
  by 1 instead: the caller selects the greedy result for it)."""
  if is_traced(temperature):
    return logits / jnp.where(temperature == 0.0, 1.0, temperature)
  return logits / temperature


def draw_tokens(key, logits, temperature: float = 1.0, top_p: float | None = None):
  """Draws a token per position from softmax(logits / temperature), logits
  [..., V] -> int [...]. ``temperature = 0`` takes the argmax; ``top_p`` in
  (0, 1] keeps the nucleus (``top_p_logits``), None or 1 turns it off. Either may
  be traced (module docstring); a traced temperature of 0 still gives exactly
  the argmax."""
  check_temperature(temperature)
  check_top_p(top_p)
  if not is_traced(temperature) and temperature == 0.0:
    return jnp.argmax(logits, axis=-1)
  drawn = jax.random.categorical(
      key, nucleus_logits(tempered_logits(logits, temperature), top_p), axis=-1)
  if is_traced(temperature):
    drawn = jnp.where(temperature == 0.0, jnp.argmax(logits, axis=-1), drawn)
  return drawn


def ancestral_reveal_steps(key, shape, num_steps: int, schedule, grid: str = "linear"):
  """The step k in [0, T) at which the T-step ancestral sampler reveals each
  token masked at t_0 = 1, int32 ``shape``.

  The per-step keep probabilities (1 - alpha(t_{i+1})) / (1 - alpha(t_i))
  telescope: P(k > i) = (1 - alpha(t_{i+1})) / (1 - alpha(t_0)) for i < T - 1
  and 0 for i = T - 1. Drawn by inversion: k = #{i : P(k > i) > u}, u ~ U[0, 1).
  """
  alpha = schedule.alpha(time_grid(num_steps, grid))
  survival = ((1.0 - alpha[1:]) / (1.0 - alpha[0])).at[-1].set(0.0)  # [T], non-increasing
  u = jax.random.uniform(key, shape)
  return jnp.searchsorted(-survival, -u, side="left").astype(jnp.int32)


def first_hitting_times(key, shape, schedule):
  """Each masked token's reveal time in continuous time, float32 ``shape``:
  P(tau < s) = (1 - alpha(s)) / (1 - alpha(1)), so
  tau = alpha^{-1}(1 - (1 - alpha(1)) u), u ~ U[0, 1)."""
  u = jax.random.uniform(key, shape)
  return schedule.inverse(1.0 - (1.0 - schedule.alpha(1.0)) * u)


def kept_masks(num_masked, scaled, last):
  """The masks a confidence step keeps: min(floor(scaled), m - 1), 0 at the
  ``last`` step, int32; m = ``num_masked`` and ``scaled`` = m (1 - alpha(s)) /
  (1 - alpha(t)). The ratio is < 1, so the floor alone is at most m - 1; the min
  keeps that where float32 rounds it to 1 (near t = 1 under the cosine
  schedule), so every step with masks left reveals at least one."""
  keep = jnp.floor(scaled + 1e-6).astype(jnp.int32)  # 1e-6: round-off
  keep = jnp.minimum(keep, jnp.maximum(num_masked - 1, 0))
  return jnp.where(last, 0, keep)


def confidence_reveal_counts(num_masked, num_steps: int, schedule, grid: str = "linear"):
  """Tokens the confidence orders reveal at each step, int32 [B, T], from the
  masks m_0 = num_masked [B]: m_{i+1} = min(floor(m_i (1 - alpha(t_{i+1})) /
  (1 - alpha(t_i))), m_i - 1) for m_i > 0 (an equal share per step under the
  linear schedule and grid), m_T = 0 (``kept_masks``); step i reveals
  m_i - m_{i+1}."""
  alpha = schedule.alpha(time_grid(num_steps, grid))
  ratio = (1.0 - alpha[1:]) / (1.0 - alpha[:-1])
  is_last = jnp.arange(num_steps) == num_steps - 1

  def step(left, xs):
    r, last = xs
    keep = kept_masks(left, left * r, last)
    return keep, left - keep

  _, counts = jax.lax.scan(step, num_masked.astype(jnp.int32), (ratio, is_last))
  return counts.T


def confidence(probs, order: str, random_scores):
  """Each distribution's confidence, [...] from probs [..., V]: its largest
  probability (``top_prob``), the gap between its two largest (``top_prob_margin``,
  Kim et al. 2025), or ``random_scores`` [...] (``random``; uniforms the caller
  drew). Shared by this module's and ``prime``'s confidence orders."""
  if order == "random":
    return random_scores
  if order == "top_prob":
    return jnp.max(probs, axis=-1)
  top2 = jax.lax.top_k(probs, 2)[0]
  return top2[..., 0] - top2[..., 1]


def reveal_top(scores, candidates, num_reveal):
  """bool [B, K]: for each row the ``num_reveal[b]`` candidates (bool [B, K]) of
  highest score (scores [B, K]). Shared with ``prime``'s samplers."""
  scores = jnp.where(candidates, scores, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)
  return candidates & (rank < num_reveal[:, None])


def sample(denoise_fn: Callable, key, x_init, num_steps: int, schedule,
           order: str = "ancestral", *, vocab_size: int | None = None,
           temperature: float = 1.0, top_p: float | None = None,
           grid: str = "linear", skip_idle: bool = True,
           return_nfe: bool = False):
  """Generates the masked positions of ``x_init``.

  Args:
    denoise_fn: ``(x_t, t [B]) -> logits [B, N, V]`` (another shape raises
      ``ValueError``, ``forward.check_logits``).
    key: PRNG key.
    x_init: int [B, N]; the mask id V marks positions to generate, the others are
      kept as given.
    num_steps: T, the grid's steps, for every order but first_hitting.
    schedule: the ``Schedule`` the model was trained with.
    order: one of ``ORDERS``.
    vocab_size: V; inferred from the logits' shape when None.
    temperature: softmax temperature of the drawn values, finite and >= 0; 0 is
      greedy.
    top_p: nucleus threshold for the drawn values, in (0, 1] (None: off).
    grid: time grid, "linear" or "cosine" (``schedules.time_grid``).
    skip_idle: no call at a step where no sequence reveals anything (module
      docstring, "Calls": the one definition, shared by every sampler); False: a
      call per grid step until nothing is masked (the reference loop). Only the
      ancestral order has idle steps to skip.
    return_nfe: also return the number of network calls made (int32 scalar).

  Returns:
    int [B, N] samples, or (samples, nfe) with ``return_nfe``.
  """
  check_settings(order, temperature, top_p)
  chex.assert_rank(x_init, 2)
  batch_size, length = x_init.shape
  if length == 0:
    raise ValueError(f"x_init has shape {tuple(x_init.shape)}: sequences of length 0; sample "
                     "needs at least one position")
  if vocab_size is None:
    vocab_size = infer_vocab_size(denoise_fn, x_init,
                                  jax.ShapeDtypeStruct((batch_size,), jnp.float32))
  check_tokens(x_init, vocab_size, allow_mask=True, name="x_init")
  return sample_unchecked(denoise_fn, key, x_init, num_steps, schedule, order, vocab_size,
                          temperature=temperature, top_p=top_p, grid=grid,
                          skip_idle=skip_idle, return_nfe=return_nfe)


def sample_unchecked(denoise_fn: Callable, key, x_init, num_steps: int, schedule, order: str,
                     vocab_size: int, *, temperature: float = 1.0, top_p: float | None = None,
                     grid: str = "linear", skip_idle: bool = True, return_nfe: bool = False):
  """``sample`` on arguments its caller has checked (``sample`` itself, and
  ``block.block_sample`` once for all its blocks): the settings
  (``check_settings``), x_init's tokens in [0, V] and its length >= 1."""
  batch_size, length = x_init.shape
  mask_id = vocab_size
  plan_key, draw_key = jax.random.split(key)
  row_keys = jax.random.split(draw_key, batch_size)
  to_generate = x_init == mask_id

  if order == "first_hitting":
    tau = jnp.where(to_generate, first_hitting_times(plan_key, x_init.shape, schedule), -1.0)

    def next_event(x, cursor):
      """(event id [B], time [B], active [B]); the event id is the masks left."""
      del cursor
      masked = x == mask_id
      left = jnp.sum(masked, axis=-1)
      return left, jnp.maximum(jnp.max(jnp.where(masked, tau, -1.0), axis=-1), 0.0), left > 0

    def choose(masked, logits, event, keys):
      del logits, event, keys
      latest = jnp.argmax(jnp.where(masked, tau, -jnp.inf), axis=-1)
      return masked & (jnp.arange(length) == latest[:, None])
  else:
    times = time_grid(num_steps, grid)
    if order == "ancestral":
      steps = jnp.where(
          to_generate, ancestral_reveal_steps(plan_key, x_init.shape, num_steps, schedule, grid),
          num_steps)

      def next_step(x, cursor):
        """The earliest reveal step of the masks left, [B] (T when none)."""
        del cursor
        return jnp.min(jnp.where(x == mask_id, steps, num_steps), axis=-1)

      def choose(masked, logits, event, keys):
        del logits, keys
        return masked & (steps == event[:, None])
    else:
      counts = confidence_reveal_counts(jnp.sum(to_generate, axis=-1), num_steps, schedule,
                                        grid)

      def next_step(x, cursor):
        """Every step reveals something until no mask is left: the next one."""
        del x
        return cursor

      def choose(masked, logits, event, keys):
        count = jnp.take_along_axis(counts, jnp.minimum(event, num_steps - 1)[:, None], 1)[:, 0]
        noise = jax.vmap(lambda k: jax.random.uniform(k, logits.shape[1:-1]))(keys)
        scores = confidence(jax.nn.softmax(logits, axis=-1), order, noise)
        return reveal_top(scores, masked, count)

    def next_event(x, cursor):
      """(step [B], its time t_step [B], active [B])."""
      step = next_step(x, cursor) if skip_idle else cursor
      active = (step < num_steps) & jnp.any(x == mask_id, axis=-1)
      return step, times[jnp.minimum(step, num_steps - 1)], active

  def body(carry):
    x, cursor, nfe, ok = carry
    event, t, active = next_event(x, cursor)
    logits = check_logits(denoise_fn(x, t), (batch_size, length, vocab_size)).astype(jnp.float32)
    ok = ok & drawable(logits, (x == mask_id) & active[:, None])
    keys = jax.vmap(lambda k, e: jax.random.split(jax.random.fold_in(k, e)))(row_keys, event)
    values = jax.vmap(lambda k, l: draw_tokens(k, l, temperature, top_p))(keys[:, 0], logits)
    reveal = choose(x == mask_id, logits, event, keys[:, 1]) & active[:, None]
    return jnp.where(reveal, values.astype(x.dtype), x), event + 1, nfe + 1, ok

  def cond(carry):
    x, cursor, _, ok = carry
    return jnp.any(next_event(x, cursor)[2]) & ok  # a bad logit: stop, nothing more to learn

  init = (x_init, jnp.zeros((batch_size,), jnp.int32), jnp.int32(0), jnp.bool_(True))
  x, _, nfe, ok = jax.lax.while_loop(cond, body, init)
  check_drawable(ok)
  return (x, nfe) if return_nfe else x
