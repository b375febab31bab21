"""MDM-Prime: masked diffusion with partial masking (Chao et al. 2025, arXiv 2505.18495).

Pure JAX: functions of arrays, a PRNG key and a ``denoise_fn`` callable; no Flax,
no config. Values are per sequence, in nats, shape [B], like ``vmd_jax.losses``.

The sub-token code (``vmd_jax.digits``)
---------------------------------------
Each token x in {0..V-1} is written as l digits in base b = ceil(V^(1/l)),
big-endian; codes in [V, b^l) are invalid, and the digit mask id is b
(``DigitCode``).

The forward process masks each of the N l digits independently:
q(d_t^i | d_0^i) = alpha(t) [d_t^i = d_0^i] + (1 - alpha(t)) [d_t^i = b].

The denoiser is unchanged, ``denoise_fn(x_t, t) -> logits [B, N, V]`` over the V
tokens, now with x_t int digits [B, N, l]. For position n let U_n be its revealed
digits and C(x_t^n) = {v < V : v agrees with x_t^n on U_n} the consistent tokens.
The renormalised token distribution is
  p_theta(v | x_t) = softmax(logits^n)_v [v in C(x_t^n)] / sum_{u in C} softmax(logits^n)_u,
and a masked digit k of position n is predicted by its marginal
  p_theta(d^{n,k} = j | x_t) = sum_{v in C(x_t^n), d_k(v) = j} p_theta(v | x_t).

The NELBO (why it is a valid bound)
-----------------------------------
It is MD4's NELBO on the digit sequence (length N l, vocabulary b) with the
marginals above as the per-digit conditionals:

  L = E_{t~U(0,1)} [ -alpha'(t) / (1 - alpha(t))
                     * sum_{(n,k): d_t^{n,k} = b} -log p_theta(d_0^{n,k} | x_t, t) ]
      + reconstruction + prior.

MD4's continuous-time bound holds for any per-digit conditionals that are
distributions over the b digit values: it is the path-space KL between the
masking process and the reverse-time Markov jump process in which a masked digit
is revealed at rate -alpha'/(1 - alpha), with its value drawn from its
conditional. In continuous time no two digits are revealed at the same instant,
so each jump reveals ONE digit from the marginal of a distribution supported on
tokens consistent with the digits already revealed: the revealed digits always
extend to a valid token, so that jump process never reaches an invalid code and
the bound is on the probability it gives to valid sequences (no mass lost to
invalid codes). The erratum's invalid loss scored several sub-token outputs
jointly with dependent heads; here every term is one conditional of one
generative process. The first-hitting sampler below simulates that process
exactly. With the exact digit denoiser (the true posterior of x_0^n given all
revealed digits) each conditional is exact and L = -log p(x_0) at eps = 0.

Discrete time, T steps (``num_steps=T``): t = (floor(u T) + 1) / T, s = t - 1/T,
r = (alpha(s) - alpha(t)) / (1 - alpha(t)). The model's step reveals each masked
digit with probability r and, per position, draws ONE token from p_theta(. | x_t)
and reveals the chosen digits of it (the ancestral sampler below). Its KL to the
forward posterior is, per position, E_R[-log p_theta(d_0^{n,R} | x_t)] over the
Bernoulli(r) subsets R of the masked digits, the joint marginal of R; written
with Z(S) = sum_{v agrees with x_0^n on S} p(v) it is log Z(U) - log Z(U u R),
summed exactly over the 2^l subsets, with weight T. As T -> oo only |R| = 1
survives at first order and the continuous form is recovered. For l = 1 both
forms equal ``md4.nelbo_terms``.

Boundary terms (eps > 0). With |C_S(x)| the number of valid tokens that agree
with x on the digit set S, and S ~ Bernoulli(alpha)^l the revealed set:
  prior          = sum_n E_{S~alpha(1)}[ log V - log |C_S(x_0^n)| ]
                   (KL to the prior that draws a uniform token and reveals each
                   of its digits with probability alpha(1));
  reconstruction = sum_n E_{S~alpha(0)}[ log |C_S(x_0^n)| ]
                   (the digits still masked at t = 0 are filled from a uniform
                   token consistent with the revealed ones).
Both are exact sums over the 2^l subsets (l small), vanish at eps = 0, equal
MD4's N alpha(1) log V and N (1 - alpha(0)) log V for l = 1, keep the bound valid
for eps > 0 and make a zero-logit denoiser's expected NELBO exactly N log V (its
digit conditionals telescope within each token to 1/V).

Samplers: see ``sample`` (``temperature`` and ``top_p`` may be traced, as in
``vmd_jax.sampling``). Blocks (BD3-LM with Prime inside each block):
``block_nelbo_terms`` and ``block_sample``. Exact references:
``exact_digit_denoiser`` and ``expected_nelbo`` (masks over the N l digits
enumerated, t by quadrature). Token and digit arguments are checked
(``forward.check_tokens``, ``check_digits``) like every entry point's.
"""

from __future__ import annotations

import math
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax import block, exact, forward
from vmd_jax.digits import DigitCode, check_digits, digit_base  # noqa: F401 (re-exported)
from vmd_jax.exact import all_sequences
from vmd_jax.forward import check_times, check_tokens, mask_where
from vmd_jax.losses import discretize_times, draw_times
from vmd_jax.sampling import (check_order, check_settings, confidence, draw_tokens,
                              kept_masks, reveal_top)
from vmd_jax.schedules import time_grid

# Log-probability of a token that is excluded (invalid code or conflict with a
# revealed digit): exp(NEG) == 0 in float32, yet finite so gradients stay finite.
NEG = -1e9
# The least token log-probability the restriction keeps: far below any probability
# float32 can hold (exp(-1e4) == 0), far above NEG, and small enough that
# renormalising among floored tokens stays accurate (float32's spacing is 1e-3
# at 1e4; at 1e9 it is 64, more than log V).
LOG_FLOOR = -1e4
UNITS = ("token", "digit")


# ----------------------------------------------------------------------------
# Token and digit predictions from token logits.


def _digit_tensor(token_values, code: DigitCode):
  """[..., V] -> [..., b, ..., b] (l digit axes), invalid codes set to NEG."""
  pad = code.num_codes - code.vocab_size
  widths = [(0, 0)] * (token_values.ndim - 1) + [(0, pad)]
  padded = jnp.pad(token_values, widths, constant_values=NEG)
  return padded.reshape(token_values.shape[:-1] + (code.base,) * code.num_digits)


def _along_axes(per_digit, code: DigitCode):
  """sum_k per_digit[..., k, :] placed on digit axis k: [..., l, b] -> [..., b^l as l axes]."""
  l, b = code.num_digits, code.base
  out = 0.0
  for k in range(l):
    shape = per_digit.shape[:-2] + (1,) * k + (b,) + (1,) * (l - 1 - k)
    out = out + per_digit[..., k, :].reshape(shape)
  return out


def _restriction(x_t, code: DigitCode, active=None):
  """[..., l, b]: 0 where digit value j is allowed by x_t's digit k, NEG where it
  conflicts with a revealed digit (``active`` False or a mask: all allowed)."""
  revealed = x_t != code.mask_id
  if active is not None:
    revealed = revealed & active
  hit = jax.nn.one_hot(x_t, code.base, dtype=bool)
  return jnp.where(~revealed[..., None] | hit, 0.0, NEG)


def _digit_axes(code: DigitCode):
  return tuple(range(-code.num_digits, 0))


def _log_tensor(logits, x_t, code: DigitCode):
  """Renormalised token log-probabilities as a digit tensor [B, N, b, ..., b]."""
  # Floored at LOG_FLOOR so a consistent token always outweighs an excluded one
  # (<= NEG): where the network gives every consistent token probability 0, they
  # share the mass evenly instead of the excluded tokens taking it.
  log_probs = jnp.maximum(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), LOG_FLOOR)
  tensor = _digit_tensor(log_probs, code) + _along_axes(_restriction(x_t, code), code)
  return tensor - jax.nn.logsumexp(tensor, axis=_digit_axes(code), keepdims=True)


def token_log_probs(logits, x_t, code: DigitCode):
  """log p_theta(v | x_t): softmax(logits) restricted to the tokens consistent
  with x_t's revealed digits and renormalised; NEG (probability 0) elsewhere.

  logits: [B, N, V]; x_t: int digits [B, N, l]. Returns float32 [B, N, V].
  """
  tensor = _log_tensor(logits, x_t, code)
  flat = tensor.reshape(tensor.shape[:-code.num_digits] + (code.num_codes,))
  return jnp.maximum(flat[..., :code.vocab_size], NEG)


def _log_marginals(tensor, code: DigitCode):
  """Per-digit log marginals of a normalised digit tensor, [..., l, b]."""
  axes = _digit_axes(code)
  if code.num_digits == 1:
    return tensor[..., None, :]
  return jnp.stack([jax.nn.logsumexp(tensor, axis=tuple(a for a in axes if a != axes[k]))
                    for k in range(code.num_digits)], axis=-2)


def digit_log_probs(logits, x_t, code: DigitCode):
  """log p_theta(d^{n,k} = j | x_t): the marginal of digit k under the renormalised
  token distribution, float32 [B, N, l, b]. A revealed digit's marginal is a
  point mass on its value."""
  return jnp.maximum(_log_marginals(_log_tensor(logits, x_t, code), code), NEG)


# ----------------------------------------------------------------------------
# Forward process and the NELBO.


def mask_digits(d0, t, schedule, code: DigitCode, *, key=None, noise=None):
  """Draws x_t ~ q(x_t | x_0) on digits: digit (n, k) is masked (set to b) iff
  noise[b, n, k] >= alpha(t_b).

  Args:
    d0: int [B, N, l] clean digits (``code.to_digits(x0)``, x0 checked by the
      caller: ``nelbo_terms``, ``block_nelbo_terms``).
    t: float [B] times in [0, 1], or [B, N] a time per position (blocks).
    schedule: a ``Schedule``.
    code: the ``DigitCode``.
    key: PRNG key, used when ``noise`` is None.
    noise: optional float [B, N, l] uniforms in [0, 1).

  Returns:
    int [B, N, l] x_t, same dtype as d0.
  """
  chex.assert_rank(d0, 3)
  if jnp.ndim(t) == 1:
    chex.assert_shape(t, (d0.shape[0],))
  else:
    chex.assert_shape(t, d0.shape[:2])
  return mask_where(d0, _per_digit(schedule.alpha(t)), code.mask_id, key=key, noise=noise)


def _subsets(num_digits: int):
  """The 2^l subsets of the digits, as bool [l] masks, the empty one first."""
  return list(all_sequences(2, num_digits).astype(bool))


def _subset_prob(s, alpha):
  """P(S = s) with each digit in S independently with probability alpha."""
  k = int(s.sum())
  return alpha**k * (1.0 - alpha) ** (len(s) - k)


def boundary_terms(d0, code: DigitCode, alpha_0, alpha_1):
  """(reconstruction, prior), each float32 [B, N] in nats (module docstring):
  recon = E_{S~alpha(0)}[log |C_S(x_0)|], prior = E_{S~alpha(1)}[log V - log |C_S(x_0)|]."""
  recon = jnp.zeros(d0.shape[:-1], jnp.float32)
  prior = jnp.zeros(d0.shape[:-1], jnp.float32)
  log_v = math.log(code.vocab_size)
  for s in _subsets(code.num_digits):
    log_count = jnp.log(code.count_consistent(d0, s))
    recon = recon + _subset_prob(s, alpha_0) * log_count
    prior = prior + _subset_prob(s, alpha_1) * (log_v - log_count)
  return recon, prior


def _per_digit(values):
  """[B] (per sequence) or [B, N] (per position) -> broadcastable to [B, N, l]."""
  return values[:, None, None] if values.ndim == 1 else values[..., None]


def nelbo_from_logits(logits, d0, x_t, t, schedule, code: DigitCode, num_steps):
  """The NELBO's terms (module docstring) given one draw x_t at time t (on the
  T-step grid for ``num_steps``) and the denoiser's logits [B, N, V] on it; t is
  [B] or [B, N] (a time per position, e.g. per block). Prime's
  ``losses.nelbo_from_logits``; d0, x_t: digits [B, N, l], checked by the caller."""
  chex.assert_shape(logits, d0.shape[:2] + (code.vocab_size,))
  masked = x_t == code.mask_id  # [B, N, l]
  tensor = _log_tensor(logits, x_t, code)  # log p_theta(v | x_t), [B, N, b..b]
  if num_steps is None:
    log_marg = _log_marginals(tensor, code)  # [B, N, l, b]
    digit_ll = jnp.take_along_axis(log_marg, d0[..., None], axis=-1)[..., 0]
    # Both zeroed on unmasked digits before the product: the weight is inf at t = 0
    # (alpha(0) = 1) and a log-likelihood may be -inf; inf * 0 would make NaN.
    weight = jnp.where(masked, _per_digit(schedule.weight(t)), 0.0)
    per_digit = -weight * jnp.where(masked, digit_ll, 0.0)
    diffusion_per_token = jnp.sum(per_digit, axis=-1)
  else:
    alpha_t, alpha_s = schedule.alpha(t), schedule.alpha(t - 1.0 / num_steps)
    r = _per_digit((alpha_s - alpha_t) / (1.0 - alpha_t)) * masked  # [B, N, l]
    target = _restriction(d0, code)  # restricts a digit to x_0's value
    diffusion_per_token = 0.0
    for s in _subsets(code.num_digits)[1:]:
      weight = jnp.prod(jnp.where(s, r, 1.0 - r), axis=-1)  # P(R = s), 0 unless s in M
      restricted = tensor + _along_axes(jnp.where(s[:, None], target, 0.0), code)
      log_joint = jax.nn.logsumexp(restricted, axis=_digit_axes(code))  # log p(d_0^R | x_t)
      # P(R = s) = 0 when s holds an unmasked digit, whose log_joint may be -inf.
      diffusion_per_token = diffusion_per_token - jnp.where(weight > 0, weight * log_joint, 0.0)
    diffusion_per_token = num_steps * diffusion_per_token
  alpha_0 = schedule.alpha(jnp.float32(0.0))
  alpha_1 = schedule.alpha(jnp.float32(1.0))
  recon, prior = boundary_terms(d0, code, alpha_0, alpha_1)
  per_token = diffusion_per_token + recon + prior
  sum_n = lambda v: jnp.sum(v, axis=-1)
  return {"diffusion": sum_n(diffusion_per_token), "reconstruction": sum_n(recon),
          "prior": sum_n(prior), "nelbo": sum_n(per_token), "per_token": per_token, "t": t}


def nelbo_terms(denoise_fn: Callable, x0, key, schedule, code: DigitCode, *,
                t=None, noise=None, z=None, num_steps: int | None = None,
                antithetic: bool = True):
  """Prime's NELBO and its terms, one Monte Carlo sample of (t, digit mask) per sequence.

  Args:
    denoise_fn: ``(x_t int digits [B, N, l], t float [B]) -> logits [B, N, V]``.
    x0: int [B, N] clean tokens in [0, V).
    key: PRNG key for t (unless given) and the masking noise (unless given);
      may be None when both are given.
    schedule: a ``vmd_jax.schedules.Schedule``.
    code: the ``DigitCode`` (V, l).
    t: optional float [B] times in [0, 1].
    noise: optional float [B, N, l] masking uniforms (see ``mask_digits``).
    z: optional float [B, D] latent (VMD, ``losses.vmd_terms``), passed as
      ``denoise_fn(x_t, t, z)``.
    num_steps: None for continuous time, else T for the T-step NELBO of the
      joint-reveal ancestral sampler (module docstring).
    antithetic: draw t stratified over the batch (``losses.stratified_times``).

  Returns:
    dict of float32 [B] in nats: ``diffusion``, ``reconstruction``, ``prior`` and
    ``nelbo`` (their sum); ``per_token`` [B, N], each token's share (its digits'
    weighted cross-entropies plus its own boundary terms; sums to ``nelbo``);
    ``t`` the time of x_t (on the T-step grid in discrete time).
  """
  chex.assert_rank(x0, 2)
  check_tokens(x0, code.vocab_size, name="x0")
  key, t = draw_times(key, x0.shape[0], t, antithetic)
  if num_steps is not None:
    t, _ = discretize_times(t, num_steps)
  d0 = code.to_digits(x0)
  x_t = mask_digits(d0, t, schedule, code, key=key, noise=noise)
  logits = denoise_fn(x_t, t) if z is None else denoise_fn(x_t, t, z)
  return nelbo_from_logits(logits, d0, x_t, t, schedule, code, num_steps)


def nelbo(denoise_fn: Callable, x0, key, schedule, code: DigitCode, **kwargs):
  """Per-sequence Prime NELBO in nats, float32 [B]; see ``nelbo_terms``."""
  return nelbo_terms(denoise_fn, x0, key, schedule, code, **kwargs)["nelbo"]


# ----------------------------------------------------------------------------
# Sampling with partial reveals.


def _check_unit(unit: str):
  if unit not in UNITS:
    raise ValueError(f"unknown reveal unit {unit!r}; known units: {list(UNITS)}")


def _check_sampler_args(x_init, code: DigitCode, order, unit, temperature, top_p):
  """The checks of ``sample`` and ``block_sample``, once per call: the settings
  (``sampling.check_settings``), the unit and x_init's digits [B, N, l]."""
  check_settings(order, temperature, top_p)
  _check_unit(unit)
  chex.assert_rank(x_init, 3)
  check_digits(x_init, code, name="x_init")


def reveal_step(key, x, logits, code: DigitCode, order: str, *, alpha_t=None, alpha_s=None,
                last=False, unit: str = "token", temperature: float = 1.0,
                top_p: float | None = None):
  """One step of the Prime sampler: x_t -> x_s given the logits at x_t.

  Every position draws ONE token from the renormalised token distribution
  (``token_log_probs``, with temperature and top-p); the digits chosen to be
  revealed take that token's digits, so several digits of one position revealed
  together form a valid code, jointly drawn. Which masked digits are revealed:

  ancestral        each independently with probability (alpha_s - alpha_t) / (1 - alpha_t)
                   (all when ``last``);
  first_hitting    one masked digit per sequence, uniformly;
  top_prob, top_prob_margin, random
                   the m - min(floor(m (1 - alpha_s) / (1 - alpha_t)), m - 1) most
                   confident units (none kept when ``last``), m the masked units: with
                   ``unit="token"`` positions with a masked digit (confidence of
                   the renormalised token distribution; all their masked digits
                   are revealed), with ``unit="digit"`` masked digits (confidence of
                   their marginal).

  x: int digits [B, N, l]; logits: [B, N, V]; alpha_t, alpha_s: scalars or [B].
  Returns int [B, N, l].
  """
  check_order(order)
  _check_unit(unit)
  batch_size, length, num_digits = x.shape
  masked = x == code.mask_id
  value_key, reveal_key = jax.random.split(key)
  log_probs = token_log_probs(logits, x, code)  # [B, N, V]
  tokens = draw_tokens(value_key, log_probs, temperature, top_p)
  values = code.to_digits(tokens).astype(x.dtype)
  if order == "first_hitting":
    scores = jax.random.uniform(reveal_key, (batch_size, length * num_digits))
    reveal = reveal_top(scores, masked.reshape(batch_size, -1),
                        jnp.ones((batch_size,), jnp.int32)).reshape(x.shape)
  elif order == "ancestral":
    reveal = _ancestral_reveal(reveal_key, masked, alpha_t, alpha_s, last)
  else:
    candidates = _candidates(masked, unit)
    unit_log_probs = log_probs if unit == "token" else digit_log_probs(logits, x, code)
    noise = jax.random.uniform(reveal_key, unit_log_probs.shape[:-1])
    scores = confidence(jnp.exp(unit_log_probs), order, noise).reshape(candidates.shape)
    chosen = reveal_top(scores, candidates,
                         _confidence_count(candidates, alpha_t, alpha_s, last))
    reveal = masked & (chosen[..., None] if unit == "token" else chosen.reshape(x.shape))
  return jnp.where(reveal, values, x)


def _ancestral_reveal(reveal_key, masked, alpha_t, alpha_s, last):
  """Each masked digit with probability (alpha_s - alpha_t) / (1 - alpha_t), all
  when ``last``: bool like ``masked`` [B, N, l]."""
  alpha_t = jnp.broadcast_to(alpha_t, masked.shape[:1])[:, None, None]
  alpha_s = jnp.broadcast_to(alpha_s, masked.shape[:1])[:, None, None]
  p_reveal = jnp.where(last, 1.0, (alpha_s - alpha_t) / (1.0 - alpha_t))
  return masked & (jax.random.uniform(reveal_key, masked.shape) < p_reveal)


def _candidates(masked, unit):
  """The units a confidence order ranks: positions with a masked digit [B, N]
  (``unit="token"``) or masked digits [B, N l]."""
  return jnp.any(masked, axis=-1) if unit == "token" else masked.reshape(masked.shape[0], -1)


def _confidence_count(candidates, alpha_t, alpha_s, last):
  """m - min(floor(m (1 - alpha_s) / (1 - alpha_t)), m - 1) units to reveal (m
  when ``last``; 0 when m = 0), m = the candidates per row, int32 [B]
  (``sampling.kept_masks``: every step with a masked unit reveals one)."""
  num_masked = jnp.sum(candidates, axis=-1)
  return num_masked - kept_masks(num_masked, num_masked * (1.0 - alpha_s) / (1.0 - alpha_t),
                                 last)


def reveals_any(key, x, code: DigitCode, order: str, *, alpha_t=None, alpha_s=None,
                last=False, unit: str = "token"):
  """Whether ``reveal_step`` with the same arguments reveals a digit of each row,
  bool [B], decided without the logits: which digits an ancestral step reveals,
  and how many units a confidence step reveals, do not depend on them."""
  masked = x == code.mask_id
  if order == "ancestral":
    _, reveal_key = jax.random.split(key)
    return jnp.any(_ancestral_reveal(reveal_key, masked, alpha_t, alpha_s, last), axis=(1, 2))
  if order == "first_hitting":
    return jnp.any(masked, axis=(1, 2))
  return _confidence_count(_candidates(masked, unit), alpha_t, alpha_s, last) > 0


def sample(denoise_fn: Callable, key, x_init, num_steps: int, schedule, code: DigitCode,
           order: str = "ancestral", *, unit: str = "token", temperature: float = 1.0,
           top_p: float | None = None, grid: str = "linear", skip_idle: bool = True,
           return_nfe: bool = False, return_idle: bool = False):
  """Generates the masked digits of ``x_init`` (int digits [B, N, l], mask id b).

  Revealed digits of ``x_init`` never change (a position whose digits are all
  given stays as given; a partly given one is completed consistently). Orders as
  in ``vmd_jax.sampling.sample``, over digits (see ``reveal_step``):

  ancestral      the T-step grid 1 = t_0 > ... > t_T = 0 (``grid``); each masked
                 digit revealed with probability (alpha_s - alpha_t)/(1 - alpha_t),
                 all remaining ones at the last step.
  first_hitting  exact continuous-time sampling of the process whose NELBO is
                 ``nelbo_terms``: with m masked digits at time t, the next
                 reveal time s solves 1 - alpha(s) = (1 - alpha(t)) u^(1/m) and one
                 masked digit, uniform, is revealed from its marginal. N l
                 iterations, one call per masked digit; ``num_steps`` is ignored.
  top_prob, top_prob_margin, random
                 ``num_steps`` steps revealing the scheduled number of units
                 (``unit``: "token" or "digit") by confidence.

  Args:
    denoise_fn: ``(x_t int [B, N, l], t [B]) -> logits [B, N, V]`` (another shape
      raises ``ValueError``, ``forward.check_logits``).
    key: PRNG key.
    x_init: int [B, N, l] digits; b marks digits to generate.
    num_steps: steps (network calls at most) for every order but first_hitting.
    schedule: the ``Schedule``.
    code: the ``DigitCode``.
    order: one of ``vmd_jax.sampling.ORDERS``.
    unit: "token" or "digit", the unit ranked by the confidence orders.
    temperature, top_p: applied to the renormalised token distribution
      (temperature finite and >= 0, 0 is greedy; top_p in (0, 1] or None).
    grid: "linear" or "cosine" (``schedules.time_grid``).
    skip_idle: no call at a step where no sequence reveals a digit
      (``reveals_any``, decided before the call; ``vmd_jax.sampling``'s module
      docstring, "Calls", defines skip_idle and NFE for every sampler): ``nfe`` =
      T - idle steps for one sequence. False: a call at every step.
    return_nfe: also return the number of network calls (int32 scalar).
    return_idle: also return, per sequence, the number of steps in which no digit
      changed (int32 [B]).

  Returns:
    int [B, N, l] digits (``code.from_digits`` gives tokens), then ``nfe`` and/or
    ``idle`` if asked for, in that order.
  """
  _check_sampler_args(x_init, code, order, unit, temperature, top_p)
  return sample_unchecked(denoise_fn, key, x_init, num_steps, schedule, code, order, unit=unit,
                          temperature=temperature, top_p=top_p, grid=grid,
                          skip_idle=skip_idle, return_nfe=return_nfe, return_idle=return_idle)


def sample_unchecked(denoise_fn: Callable, key, x_init, num_steps: int, schedule,
                     code: DigitCode, order: str, *, unit: str = "token",
                     temperature: float = 1.0, top_p: float | None = None,
                     grid: str = "linear", skip_idle: bool = True, return_nfe: bool = False,
                     return_idle: bool = False):
  """``sample`` on arguments its caller has checked (``sample`` itself, and
  ``block_sample`` once for all its blocks): the settings and x_init's digits."""
  batch_size, length, num_digits = x_init.shape
  mask_id = code.mask_id

  if order == "first_hitting":
    num_iters, times = length * num_digits, None
  else:
    num_iters, times = num_steps, time_grid(num_steps, grid)

  def step_times(i, x, t_prev, key):
    """(t at which step i calls the network, s after it), each [B]."""
    if times is not None:
      return jnp.full((batch_size,), times[i]), jnp.full((batch_size,), times[i + 1])
    num_masked = jnp.sum(x == mask_id, axis=(1, 2))
    u = jax.random.uniform(key, (batch_size,))
    exponent = 1.0 / jnp.maximum(num_masked, 1)
    s = schedule.inverse(1.0 - (1.0 - schedule.alpha(t_prev)) * u**exponent)
    s = jnp.where(num_masked > 0, s, t_prev)
    return s, s

  network = lambda x, t: forward.check_logits(
      denoise_fn(x, t), (batch_size, length, code.vocab_size)).astype(jnp.float32)

  def body(i, carry):
    x, nfe, t_prev, idle = carry
    time_key, step_key = jax.random.split(jax.random.fold_in(key, i))
    t, s = step_times(i, x, t_prev, time_key)
    step = dict(alpha_t=schedule.alpha(t), alpha_s=schedule.alpha(s), last=i == num_iters - 1,
                unit=unit)
    call = (jnp.any(reveals_any(step_key, x, code, order, **step)) if skip_idle
            else jnp.bool_(True))
    x_new = jax.lax.cond(
        call,
        lambda: reveal_step(step_key, x, network(x, t), code, order,
                            temperature=temperature, top_p=top_p, **step),
        lambda: x)
    same = jnp.all(x_new == x, axis=(1, 2))
    return (x_new, nfe + call.astype(jnp.int32), s, idle + same.astype(jnp.int32))

  init = (x_init, jnp.int32(0), jnp.ones((batch_size,), jnp.float32),
          jnp.zeros((batch_size,), jnp.int32))
  x, nfe, _, idle = jax.lax.fori_loop(0, num_iters, body, init)
  out = (x,) + ((nfe,) if return_nfe else ()) + ((idle,) if return_idle else ())
  return out[0] if len(out) == 1 else out


# ----------------------------------------------------------------------------
# Block diffusion with partial masking (BD3-LM's blocks, Prime within each block).


def block_nelbo_terms(denoise_fn: Callable, x0, key, schedule, code: DigitCode,
                      block_size: int, *, t=None, noise=None, clip=(0.0, 1.0), z=None,
                      num_steps: int | None = None, antithetic: bool = True):
  """Block Prime NELBO: sum_b of Prime's NELBO of block b given the clean blocks < b.

  -log p(x_0) = sum_b -log p(x^b | x^{<b}) and each block's term is bounded by
  Prime's NELBO (module docstring) at its own time t_b, so the sum is a valid
  bound. One network call on the 2L positions [x_t ; x_0] (digits [B, 2L, l],
  clean digits at t = 0) with ``block.block_diffusion_mask``, as
  ``block.block_nelbo_terms``; with l = 1 the two are equal. ``clip`` other
  than (0, 1) is BD3-LM's clipped mask rate (a training objective, not a bound).

  Args:
    denoise_fn: ``(x digits [B, 2L, l], t [B, 2L], positions [1, 2L],
      mask [2L, 2L][, z=[B, 2L, D]]) -> logits [B, 2L, V]``.
    x0: int [B, L] tokens in [0, V); key: PRNG key (may be None when t and noise
      are given); schedule, code: as in ``nelbo_terms``; block_size: L'.
    t: optional float [B, K] uniforms (block times for clip = (0, 1)).
    noise: optional float [B, L, l] digit masking uniforms.
    z: optional float [B, K, D], a latent per block (VMD).
    num_steps, antithetic: as in ``nelbo_terms``, per block.

  Returns:
    ``nelbo_terms``' dict (each [B]; ``per_token`` [B, L]) with ``t``
    [B, K], ``per_block`` [B, K] and ``xt`` digits [B, L, l].
  """
  chex.assert_rank(x0, 2)
  check_tokens(x0, code.vocab_size, name="x0")
  t, _, noise = block.block_draws(key, schedule, x0.shape + (code.num_digits,), block_size,
                                  t=t, noise=noise, clip=clip, num_steps=num_steps,
                                  antithetic=antithetic)
  t_tok = block.per_token(t, block_size)  # [B, L]
  d0 = code.to_digits(x0)
  x_t = mask_digits(d0, t_tok, schedule, code, noise=noise)
  logits = block.vectorised_logits(denoise_fn, x_t, d0, t_tok, block_size,
                                   vocab_size=code.vocab_size, z=z)
  terms = nelbo_from_logits(logits, d0, x_t, t_tok, schedule, code, num_steps)
  return {**terms, "t": t, "per_block": block.sum_per_block(terms["per_token"], block_size),
          "xt": x_t}


def block_sample(denoise_fn: Callable, prefill_fn: Callable | None, key, x_init,
                 block_size: int, num_steps_per_block: int, schedule, code: DigitCode,
                 order: str = "ancestral", *, unit: str = "token",
                 temperature: float = 1.0, top_p: float | None = None,
                 grid: str = "linear", skip_idle: bool = True, use_cache: bool = True,
                 cache_segments: int = 4, z=None, return_nfe: bool = False):
  """Generates the masked digits of x_init [B, L, l] block by block, left to right.

  Block b is ``sample`` (any order; unit, temperature, top_p, grid and skip_idle
  as there; key fold_in(key, b)) with a denoiser that sees block b at time t and
  the clean blocks < b, read from ``block``'s KV cache (else recomputed with
  ``block.block_causal_mask``; same logits), through ``block.blockwise``. The
  cache machinery works on [B, L] ints, so digits travel through it packed
  (``DigitCode.pack``) and are unpacked before the network. Interface as
  ``block.block_sample`` (denoise_fn and prefill_fn take digits [B, n, l],
  ``cache_segments`` as there), except that ``code`` gives V (no
  ``vocab_size``) and ``unit`` is Prime's.

  Returns:
    int [B, L, l] digits, or (digits, nfe) with ``return_nfe`` (prefill calls
    not counted).
  """
  _check_sampler_args(x_init, code, order, unit, temperature, top_p)
  unpacked = lambda fn: None if fn is None else (lambda x, *a, **kw: fn(code.unpack(x), *a, **kw))

  def sample_block(logits_fn, block_key, x_block):
    return sample_unchecked(logits_fn, block_key, x_block, num_steps_per_block, schedule, code,
                            order, unit=unit, temperature=temperature, top_p=top_p, grid=grid,
                            skip_idle=skip_idle, return_nfe=True)

  x, nfe = block.blockwise(sample_block, unpacked(denoise_fn), unpacked(prefill_fn), key,
                           x_init, block_size, use_cache=use_cache,
                           cache_segments=cache_segments, z=z, pack=code.pack)
  return (x, nfe) if return_nfe else x


# ----------------------------------------------------------------------------
# Exact references for enumerable joints.


def exact_digit_denoiser(probs, code: DigitCode, length: int, log_floor: float = -1e4):
  """The optimal Prime denoiser of the joint ``probs`` [V^N] as ``denoise_fn(x_t, t)``.

  Returns logits [B, N, V] = log p(x_0^n = v | the revealed digits of every
  position of x_t [B, N, l]) (``log_floor`` where that probability is 0; a
  context of probability 0 gives uniform logits). Ignores t.
  """
  vocab_size = code.vocab_size
  probs, seqs, one_hot = exact.enumerable_joint(probs, vocab_size, length)
  seq_digits = code.to_digits(seqs)  # [S, N, l]

  def denoise_fn(x_t, t=None, *unused):
    del t, unused
    ok = (x_t[:, None] == code.mask_id) | (x_t[:, None] == seq_digits[None])
    weights = jnp.all(ok, axis=(-2, -1)) * probs[None]  # [B, S]
    return exact.conditional_logits(weights, one_hot, log_floor)

  return denoise_fn


def expected_nelbo(denoise_fn, x0, schedule, code: DigitCode, *, num_steps: int | None = None,
                   num_quadrature: int = 16, rule: str = "gauss"):
  """E_{t, x_t}[Prime NELBO(x_0)] with the 2^(N l) digit masks enumerated, in nats.

  P(M | t) = (1 - alpha)^|M| alpha^(N l - |M|). Continuous time integrates t with
  ``rule``: "gauss" (Gauss-Legendre on [0, 1]; exact for the linear schedule with
  num_quadrature >= N l / 2, since w(t) P(M | t) is then a polynomial) or
  "midpoint" (as ``exact.expected_nelbo``); discrete time averages the T grid
  cells exactly. Calls ``nelbo_terms`` with explicit t and noise, so it
  checks that function without Monte Carlo error. x0: int [N] or [S, N]; returns
  a float or float64 [S]. Small N l only.
  """
  x0 = np.asarray(x0, np.int32)
  single = x0.ndim == 1
  x0 = np.atleast_2d(x0)
  if num_steps is not None:
    t, w = exact.quadrature(num_steps)
  else:
    t, w = exact.quadrature(num_quadrature, rule)
  rows = exact.enumerate_masks(x0, t, code.num_digits)
  terms = jax.jit(lambda x, t, u: nelbo_terms(
      denoise_fn, x, None, schedule, code, t=t, noise=u, num_steps=num_steps))(
          rows.x0, rows.t, rows.noise)
  p_pattern = exact.mask_probability(rows.masks, schedule.alpha(terms["t"]))
  out = exact.expectation(np.asarray(terms["diffusion"], np.float64) * p_pattern,
                          np.asarray(terms["reconstruction"], np.float64)
                          + np.asarray(terms["prior"], np.float64), len(x0), w)
  return float(out[0]) if single else out
