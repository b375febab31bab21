"""GenMD4: masked diffusion with a learnable, token-dependent masking schedule.

Shi et al. 2024 (arXiv 2406.04329), "generalized state-dependent masking"; the
JAX reference is google-deepmind/md4, ``md4/models/diffusion/genmd4.py``. Pure
JAX: functions of arrays, a PRNG key, the schedule parameters and a
``denoise_fn(x_t int [B, N], t float [B]) -> logits [B, N, V]``; no Flax, no
config. Tokens are 0..V-1, the mask id is m = V, the logits cover the V tokens
only. Values are per sequence, in nats, shape [B].

Schedule. One exponent w_v > 0 per token value v (a vector of V), and

  alpha_v(t) = (1 - 2 eps) (1 - t^{w_v}) + eps,
  alpha_v'(t) = -(1 - 2 eps) w_v t^{w_v - 1},
  lambda_v(t) = -alpha_v'(t) / (1 - alpha_v(t))     (= w_v / t at eps = 0).

The eps shift is the project's (``vmd_jax.schedules``: alpha in [eps, 1 - eps]),
so with every w_v = k this is exactly ``get_schedule("polynomial", k=k, eps=eps)``.
md4's GenMD4 instead takes alpha_v = 1 - (1 - eps) t^{w_v} (alpha_v(0) = 1) with t
drawn from [t1, 1], t1 = 1e-3, and a reconstruction term at t1. The exponents are
parameterised as md4 does, w = softplus(raw_w), ``raw_w`` initialised to
softplus^{-1}(1) = log(e - 1) (the linear schedule).

Forward process. Position n keeps its value with probability alpha_{x_0^n}(t),
else becomes m, independently:
q(x_t | x_0) = prod_n [alpha_{x_0^n}(t) if x_t^n = x_0^n else 1 - alpha_{x_0^n}(t)].
As in ``vmd_jax.forward``, position n is masked iff its uniform noise u^n >=
alpha_{x_0^n}(t), so x_t is a deterministic function of (x_0, t, u).

Reverse process. Per token, the masking hazard of value v is -alpha_v'/alpha_v; the
time reversal reveals a masked position to value v at rate

  lambda_v(t) * p(x_0^n = v | x_t),

where the posterior p(x_0 | x_t) now depends on t and the exponents (see
``exact_denoiser``). The model replaces it by mu^n = softmax(logits^n).

NELBO. The KL between the reverse process conditioned on x_0 (reveal x_0^n at
rate lambda_{x_0^n}) and the model (reveal v at rate lambda_v mu_v) integrates
sum_{y != x} [R_theta - R_q + R_q log(R_q / R_theta)] over t (Campbell et al.
2022); per masked position that is -lambda_{x_0^n} log mu_{x_0^n} + sum_v
lambda_v mu_v - lambda_{x_0^n}. Hence (paper's GenMD4 ELBO; md4's
``diffusion_loss`` with dgamma_times_alpha = -lambda_v)

  L = E_{t~U(0,1)} E_{x_t~q(.|x_0)} [ sum_{n: x_t^n = m}
        ( -lambda_{x_0^n}(t) log mu^n_{x_0^n}(x_t, t)
          + sum_v (lambda_v(t) - lambda_{x_0^n}(t)) mu^n_v(x_t, t) ) ]
      + sum_n (1 - alpha_{x_0^n}(0)) log V      (reconstruction, = N eps log V)
      + sum_n alpha_{x_0^n}(1) log V            (prior,          = N eps log V).

Each integrand is >= 0 (log x <= x - 1). With equal exponents the second sum is
zero and L is MD4's NELBO; with the exact posterior and eps = 0, L = -log p(x_0).

Gradient for the exponents. L = E_t E_{x_t ~ q_w}[f_{w,theta}(x_t, t)] with a
discrete x_t, so grad_w L = E[grad_w f] + E[f grad_w log q_w(x_t | x_0, t)]. With
two draws x_t^(1), x_t^(2) at the same t and each one's baseline the other's f
(REINFORCE leave-one-out, K = 2; md4's ``reinforce_loss``), the unbiased estimate
is the gradient of the surrogate

  S = (f_1 + f_2) / 2 + (1/2) sg(f_1 - f_2) (log q_1 - log q_2)   (sg: stop_gradient)

w.r.t. both the schedule parameters and the denoiser's parameters (the second
term carries no gradient to the denoiser). ``rloo_loss`` returns
S - sg(score term), whose value is the NELBO estimate and whose gradient is S's.

Sampling. From t to s < t a masked position is revealed to v with probability
mu_v (alpha_v(s) - alpha_v(t)) / (1 - alpha_v(t)) and stays masked with
probability sum_v mu_v (1 - alpha_v(s)) / (1 - alpha_v(t)) (``reverse_log_probs``).
Exact first-hitting sampling is not possible here: the time of the next reveal
depends on the unknown values of all masked tokens, so its law,
P(no reveal in (s, t] | x_t) = E_{x_0 ~ p(x_0 | x_t, t)} prod_{n masked}
(1 - alpha_{x_0^n}(s)) / (1 - alpha_{x_0^n}(t)), needs the joint posterior (a
factorised denoiser gives only its marginals) and, as the posterior changes with t
even while nothing is revealed, the denoiser along the whole interval. The
ancestral sampler converges to the continuous-time reverse process as the grid
is refined (at most one reveal per step).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax import exact
from vmd_jax.forward import check_logits, check_tokens, mask_where
from vmd_jax.losses import draw_times, token_log_likelihood
from vmd_jax.sampling import check_settings, is_traced, nucleus_logits, tempered_logits
from vmd_jax.schedules import MD4_EPS, time_grid

DenoiseFn = Callable[..., jax.Array]

# lambda_v(t) and alpha_v'(t) are infinite at t = 0 (w_v < 1, or eps = 0 for
# lambda): they are evaluated at t >= _T_MIN, finite. t^w itself is exact (``_log_tw``).
_T_MIN = 1e-30


class GenMD4Params(NamedTuple):
  """Schedule parameters: ``raw_w`` float [V], exponents w = softplus(raw_w)."""

  raw_w: jax.Array


def init_params(vocab_size: int, power_init: float = 1.0) -> GenMD4Params:
  """Every exponent equal to ``power_init`` (md4's initialisation; 1 = linear)."""
  if not power_init > 0:
    raise ValueError(f"power_init must be > 0, got {power_init}")
  return params_from_exponents(jnp.full((vocab_size,), power_init, jnp.float32))


def params_from_exponents(w) -> GenMD4Params:
  """The parameters whose exponents are ``w`` [V] (> 0): raw_w = log(expm1(w))."""
  w = jnp.asarray(w, jnp.float32)
  return GenMD4Params(raw_w=w + jnp.log(-jnp.expm1(-w)))


def exponents(params: GenMD4Params):
  """w = softplus(raw_w), float [V]."""
  return jax.nn.softplus(params.raw_w)


# Per-exponent helpers: ``w`` and ``t`` broadcast against each other.


def _log_t(t):
  return jnp.log(jnp.maximum(jnp.asarray(t, jnp.float32), _T_MIN))


def _log_tw(w, t):
  """log t^w = w log t, exactly -inf at t = 0 (t^w = 0 for every w > 0), with a
  zero gradient in w there (log t is never evaluated at 0)."""
  t = jnp.asarray(t, jnp.float32)
  at_zero = t == 0.0
  return jnp.where(at_zero, -jnp.inf, w * jnp.log(jnp.where(at_zero, 1.0, t)))


def _log_mask_prob(w, t, eps):
  """log(1 - alpha) = log((1 - 2 eps) t^w + eps)."""
  log_tw = _log_tw(w, t)
  if eps == 0.0:
    return log_tw
  return jnp.logaddexp(math.log1p(-2.0 * eps) + log_tw, math.log(eps))


def _alpha(w, t, eps):
  """alpha = (1 - 2 eps) (1 - t^w) + eps, with 1 - t^w = -expm1(w log t)."""
  return -(1.0 - 2.0 * eps) * jnp.expm1(_log_tw(w, t)) + eps


def _weight(w, t, eps):
  """lambda = (1 - 2 eps) w t^{w-1} / ((1 - 2 eps) t^w + eps)
            = (1 - 2 eps) w / ((1 - 2 eps) t + eps t^{1-w}),
  the denominator in log space: near t = _T_MIN its square, in the gradient in w,
  would underflow (inf * 0 = NaN where no token is masked)."""
  log_t = _log_t(t)
  if eps == 0.0:
    return w * jnp.exp(-log_t)
  log_den = jnp.logaddexp(math.log1p(-2.0 * eps) + log_t, math.log(eps) + (1.0 - w) * log_t)
  return (1.0 - 2.0 * eps) * w * jnp.exp(-log_den)


def _per_value(fn, params, t, eps):
  return fn(exponents(params), jnp.asarray(t, jnp.float32)[..., None], eps)


def alpha(params: GenMD4Params, t, *, eps: float = MD4_EPS):
  """alpha_v(t) = (1 - 2 eps)(1 - t^{w_v}) + eps for every value v, [*t.shape, V]."""
  return _per_value(_alpha, params, t, eps)


def dalpha(params: GenMD4Params, t, *, eps: float = MD4_EPS):
  """alpha_v'(t) = -(1 - 2 eps) w_v t^{w_v - 1}, [*t.shape, V]."""
  w = exponents(params)
  log_t = _log_t(jnp.asarray(t, jnp.float32)[..., None])
  return -(1.0 - 2.0 * eps) * w * jnp.exp((w - 1.0) * log_t)


def weight(params: GenMD4Params, t, *, eps: float = MD4_EPS):
  """lambda_v(t) = -alpha_v'(t) / (1 - alpha_v(t)) (w_v / t at eps = 0), [*t.shape, V]."""
  return _per_value(_weight, params, t, eps)


def log_mask_prob(params: GenMD4Params, t, *, eps: float = MD4_EPS):
  """log(1 - alpha_v(t)) = log((1 - 2 eps) t^{w_v} + eps), [*t.shape, V]."""
  return _per_value(_log_mask_prob, params, t, eps)


def token_exponents(params: GenMD4Params, x0):
  """w_{x_0^n}, float [B, N]."""
  return exponents(params)[x0]


def token_alpha(params: GenMD4Params, x0, t, *, eps: float = MD4_EPS):
  """alpha_{x_0^n}(t_b), the keep probability of every token, float [B, N]."""
  return _alpha(token_exponents(params, x0), jnp.asarray(t, jnp.float32)[:, None], eps)


def mask_by_value(params: GenMD4Params, x0, t, *, key=None, noise=None,
                  eps: float = MD4_EPS):
  """Draws x_t ~ q(x_t | x_0): position n is masked iff noise[b, n] >= alpha_{x_0^n}(t_b).

  Args:
    params: the schedule parameters (V exponents).
    x0: int [B, N] clean tokens in [0, V); the mask id is V = len(raw_w).
    t: float [B] times in [0, 1].
    key: PRNG key, used when ``noise`` is None.
    noise: optional float [B, N] uniforms in [0, 1).
    eps: the schedule's shift.

  Returns:
    int [B, N] x_t, same dtype as x0.
  """
  chex.assert_rank(x0, 2)
  chex.assert_shape(t, (x0.shape[0],))
  return mask_where(x0, token_alpha(params, x0, t, eps=eps), params.raw_w.shape[-1], key=key,
                    noise=noise)


def log_forward_prob(params: GenMD4Params, x0, xt, t, *, eps: float = MD4_EPS):
  """log q(x_t | x_0, t) = sum_n log(1 - alpha_{x_0^n}(t)) [masked] + log alpha_{x_0^n}(t)
  [kept], float [B] (differentiable in ``params``)."""
  mask_id = params.raw_w.shape[-1]
  w = token_exponents(params, x0)
  t = jnp.asarray(t, jnp.float32)[:, None]
  log_masked = _log_mask_prob(w, t, eps)
  # Clipped so that the unused branch of the where has a finite gradient.
  log_kept = jnp.log(jnp.maximum(_alpha(w, t, eps), 1e-30))
  return jnp.sum(jnp.where(xt == mask_id, log_masked, log_kept), axis=-1)


# ----------------------------------------------------------------------------
# The NELBO.


def nelbo_from_logits(logits, x0, xt, t, params: GenMD4Params, *, eps: float = MD4_EPS):
  """The NELBO's terms (module docstring) given one draw x_t at time t and the
  denoiser's logits on it: GenMD4's ``losses.nelbo_from_logits``.

  Args:
    logits: float [B, N, V].
    x0: int [B, N] clean tokens; xt: int [B, N] with masks V; t: float [B]
      (checked by the caller).
    params: schedule parameters; eps: the schedule's shift.

  Returns:
    dict of float32 in nats: ``diffusion``, ``reconstruction``, ``prior``,
    ``nelbo`` [B]; ``per_token`` [B, N] (each token's integrand plus 1/N of the
    boundary terms; sums to ``nelbo``); ``t`` [B] and ``xt`` [B, N].
  """
  chex.assert_rank([x0, xt], 2)
  chex.assert_equal_shape([x0, xt])
  batch_size, num_tokens = x0.shape
  vocab_size = params.raw_w.shape[-1]
  t = jnp.asarray(t, jnp.float32)
  chex.assert_shape(t, (batch_size,))
  chex.assert_shape(logits, (batch_size, num_tokens, vocab_size))
  lam = weight(params, t, eps=eps)[:, None, :]                        # [B, 1, V]
  lam_x0 = jnp.take_along_axis(lam, x0[..., None], axis=-1)[..., 0]   # [B, N]
  mu = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  # sum_v (lambda_v - lambda_{x0}) mu_v: zero when the exponents are equal.
  rate_gap = jnp.sum((lam - lam_x0[..., None]) * mu, axis=-1)
  masked = xt == vocab_size  # selected, not multiplied: an unmasked -inf log-likelihood
  diffusion_per_token = jnp.where(
      masked, -lam_x0 * jnp.where(masked, token_log_likelihood(logits, x0), 0.0) + rate_gap, 0.0)
  diffusion = jnp.sum(diffusion_per_token, axis=-1)
  log_v = math.log(vocab_size)
  zeros = jnp.zeros((batch_size,), jnp.float32)
  w = token_exponents(params, x0)
  recon = jnp.sum(jnp.exp(_log_mask_prob(w, zeros[:, None], eps)), axis=-1) * log_v
  prior = jnp.sum(token_alpha(params, x0, zeros + 1.0, eps=eps), axis=-1) * log_v
  per_token = diffusion_per_token + ((recon + prior) / num_tokens)[:, None]
  return {"diffusion": diffusion, "reconstruction": recon, "prior": prior,
          "nelbo": diffusion + recon + prior, "per_token": per_token, "t": t,
          "xt": xt}


def nelbo_terms(denoise_fn: DenoiseFn, x0, key, params: GenMD4Params, *,
                eps: float = MD4_EPS, t=None, noise=None, z=None, antithetic: bool = True):
  """GenMD4's continuous-time NELBO, one Monte Carlo sample of (t, x_t) per sequence.

  The analogue of ``md4.nelbo_terms``: with every exponent equal to k it
  returns the same values as ``md4.nelbo_terms(..., get_schedule("polynomial",
  k=k, eps=eps))`` for the same t and noise.

  Args:
    denoise_fn: ``(x_t int [B, N], t float [B]) -> logits [B, N, V]``.
    x0: int [B, N] clean tokens in [0, V), V = len(params.raw_w).
    key: PRNG key for t (unless given) and the masking noise (unless given);
      may be None when both are given.
    params: schedule parameters.
    eps: the schedule's shift (0 turns it off).
    t: optional float [B] times in [0, 1].
    noise: optional float [B, N] masking uniforms (see ``mask_by_value``).
    z: optional float [B, D] latent, passed as ``denoise_fn(x_t, t, z)``.
    antithetic: draw t stratified over the batch (``losses.stratified_times``).

  Returns:
    the dict of ``nelbo_from_logits``: ``nelbo``, ``diffusion``, ``reconstruction``,
    ``prior`` [B] (nats), ``per_token`` [B, N], ``t`` [B], ``xt`` [B, N].
  """
  chex.assert_rank(x0, 2)
  check_tokens(x0, params.raw_w.shape[-1], name="x0")
  key, t = draw_times(key, x0.shape[0], t, antithetic)
  xt = mask_by_value(params, x0, t, key=key, noise=noise, eps=eps)
  logits = denoise_fn(xt, t) if z is None else denoise_fn(xt, t, z)
  return nelbo_from_logits(logits, x0, xt, t, params, eps=eps)


def nelbo(denoise_fn: DenoiseFn, x0, key, params: GenMD4Params, **kwargs):
  """Per-sequence GenMD4 NELBO in nats, float32 [B]; see ``nelbo_terms``."""
  return nelbo_terms(denoise_fn, x0, key, params, **kwargs)["nelbo"]


def rloo_loss(denoise_fn: DenoiseFn, x0, key, params: GenMD4Params, *,
              eps: float = MD4_EPS, t=None, noise=None, z=None, antithetic: bool = True):
  """Training surrogate whose gradient is an unbiased estimate of grad E[NELBO].

  Two draws x_t^(1), x_t^(2) ~ q_w(. | x_0, t) share one t per sequence. With f_i
  their diffusion terms and log q_i = ``log_forward_prob`` (the denoiser is called
  once, on the 2B rows of both draws):

    loss = (nelbo_1 + nelbo_2) / 2 + score - sg(score),
    score = (1/2) sg(f_1 - f_2) (log q_1 - log q_2)

  The gradient w.r.t. the denoiser's parameters is the pathwise mean of the two
  draws; w.r.t. the schedule parameters it adds the REINFORCE leave-one-out term
  (md4's ``reinforce_loss``), which accounts for the discrete x_t's dependence on
  the exponents. ``loss``'s value equals ``nelbo`` (md4 adds the score term
  without subtracting its value; the gradients are the same).

  Args:
    denoise_fn, x0, key, params, eps, z, antithetic: as in ``nelbo_terms``.
    t: optional float [B] times, shared by both draws.
    noise: optional float [2, B, N] masking uniforms of the two draws.

  Returns:
    dict: ``loss`` [B] (differentiate its mean), ``nelbo``, ``diffusion``,
    ``reconstruction``, ``prior`` [B] and ``per_token`` [B, N] (means of the two
    draws), ``score`` [B] (the RLOO term's value), ``t`` [B], ``xt`` [2, B, N].
  """
  chex.assert_rank(x0, 2)
  check_tokens(x0, params.raw_w.shape[-1], name="x0")
  key, t = draw_times(key, x0.shape[0], t, antithetic)
  if noise is None:
    if key is None:
      raise ValueError("rloo_loss needs a key or explicit noise")
    noise = jax.random.uniform(key, (2,) + x0.shape)
  batch_size, length = x0.shape
  chex.assert_shape(noise, (2, batch_size, length))
  # Both draws in one denoiser call on a batch of 2B: rows (draw, sequence).
  x0_2, t_2 = jnp.concatenate([x0, x0]), jnp.concatenate([t, t])
  z_2 = None if z is None else jnp.concatenate([z, z])
  terms = nelbo_terms(denoise_fn, x0_2, None, params, eps=eps, t=t_2, z=z_2,
                      noise=noise.reshape(2 * batch_size, length))
  log_q = log_forward_prob(params, x0_2, terms["xt"], t_2, eps=eps).reshape(2, batch_size)
  draws = {name: terms[name].reshape((2, batch_size) + terms[name].shape[1:])
           for name in ("nelbo", "diffusion", "reconstruction", "prior", "per_token", "xt")}
  gap = jax.lax.stop_gradient(draws["diffusion"][0] - draws["diffusion"][1])
  score = 0.5 * gap * (log_q[0] - log_q[1])
  mean = {name: 0.5 * (value[0] + value[1])
          for name, value in draws.items() if name != "xt"}
  loss = mean["nelbo"] + score - jax.lax.stop_gradient(score)
  return {**mean, "loss": loss, "score": score, "t": t, "xt": draws["xt"]}


# ----------------------------------------------------------------------------
# Sampling.


def reverse_log_probs(logits, params: GenMD4Params, t, s, *, eps: float = MD4_EPS):
  """log p(x_s^n | x_t) of a masked position, float [B, N, V + 1] (last: stays masked).

  p(x_s^n = v) = mu_v (alpha_v(s) - alpha_v(t)) / (1 - alpha_v(t)),
  p(x_s^n = m) = sum_v mu_v (1 - alpha_v(s)) / (1 - alpha_v(t)),
  with mu = softmax(logits) and alpha_v(s) - alpha_v(t) = (1 - 2 eps) (t^{w_v} -
  s^{w_v}). This is the exact one-position marginal of the reverse process when
  mu is the true posterior p(x_0^n | x_t, t); positions are drawn independently.

  Args:
    logits: float [B, N, V]; t, s: float [B] with 0 <= s < t <= 1.
  """
  chex.assert_rank(logits, 3)
  w = exponents(params)
  t = jnp.asarray(t, jnp.float32)[:, None, None]
  s = jnp.asarray(s, jnp.float32)[:, None, None]
  log_mu = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  log_mask_t = _log_mask_prob(w, t, eps)                              # [B, 1, V]
  log_mask_s = _log_mask_prob(w, s, eps)
  # log(t^w - s^w) = w log t + log(-expm1(w log s - w log t)).
  log_tw = _log_tw(w, t)
  log_gap = (math.log1p(-2.0 * eps) + log_tw
             + jnp.log(-jnp.expm1(jnp.minimum(_log_tw(w, s) - log_tw, -1e-30))))
  log_reveal = log_mu + log_gap - log_mask_t
  log_stay = jax.nn.logsumexp(log_mu + log_mask_s - log_mask_t, axis=-1, keepdims=True)
  return jnp.concatenate([log_reveal, log_stay], axis=-1)


def _sampling_logits(logits, temperature, top_p):
  """The logits of mu after temperature and top-p (either may be traced; a
  temperature of 0 keeps only the argmax values, traced or not); ``sample`` has
  checked both."""
  greedy = lambda: jnp.where(logits >= jnp.max(logits, axis=-1, keepdims=True), 0.0, -jnp.inf)
  if is_traced(temperature):
    return jnp.where(temperature == 0.0, greedy(),
                     nucleus_logits(tempered_logits(logits, temperature), top_p))
  if temperature == 0.0:
    return greedy()
  return nucleus_logits(tempered_logits(logits, temperature), top_p)


def sample(denoise_fn: DenoiseFn, key, x_init, num_steps: int, params: GenMD4Params, *,
           eps: float = MD4_EPS, temperature: float = 1.0, top_p: float | None = None,
           grid="linear", return_nfe: bool = False):
  """Ancestral sampling under the state-dependent schedule (``reverse_log_probs``).

  On the grid 1 = t_0 > ... > t_T = 0, step i calls the denoiser at t_i and moves
  every masked position to a value or keeps it masked with the probabilities of
  ``reverse_log_probs`` (t = t_i, s = t_{i+1}). At the last step every remaining
  mask is drawn from mu (the posterior of x_0^n; identical to the rule at eps = 0).
  No exact first-hitting variant exists (module docstring); this sampler
  converges to the continuous-time reverse process as the grid is refined.
  Positions of ``x_init`` that are not masked are given and never change. Runs
  under ``lax.fori_loop``; jit with ``num_steps`` (and a string ``grid``) static.
  ``temperature`` and ``top_p`` may be traced (checked only when concrete), as in
  ``vmd_jax.sampling``.

  Args:
    denoise_fn: ``(x_t int [B, N], t float [B]) -> logits [B, N, V]`` (another
      shape raises ``ValueError``, ``forward.check_logits``).
    key: PRNG key; step i uses ``fold_in(key, i)``.
    x_init: int [B, N]; the mask id V marks the positions to generate.
    num_steps: T, network calls at most.
    params: schedule parameters (V exponents); eps: the schedule's shift.
    temperature: softmax temperature of mu, finite and >= 0; 0 puts all of mu
      on the argmax.
    top_p: nucleus threshold applied to mu (None: off).
    grid: "linear" or "cosine" (``schedules.time_grid``), or float [T + 1]
      decreasing times from 1 to 0.
    return_nfe: also return the number of denoiser calls (int32; a step with no
      mask left anywhere in the batch makes no call: the only step known to be
      idle before its call here, ``vmd_jax.sampling``'s module docstring, "Calls").

  Returns:
    int [B, N] samples, or (samples, nfe) with ``return_nfe``.
  """
  check_settings(None, temperature, top_p)
  chex.assert_rank(x_init, 2)
  batch_size, length = x_init.shape
  vocab_size = params.raw_w.shape[-1]
  check_tokens(x_init, vocab_size, allow_mask=True, name="x_init")
  mask_id = vocab_size
  if isinstance(grid, str):
    times = time_grid(num_steps, grid)
  else:
    times = jnp.asarray(grid, jnp.float32)
    chex.assert_shape(times, (num_steps + 1,))

  def body(i, carry):
    x, nfe = carry
    t = jnp.full((batch_size,), times[i])
    s = jnp.full((batch_size,), times[i + 1])
    masked = x == mask_id
    call = jnp.any(masked)
    logits = jax.lax.cond(
        call, lambda: check_logits(denoise_fn(x, t),
                                   (batch_size, length, vocab_size)).astype(jnp.float32),
        lambda: jnp.zeros((batch_size, length, vocab_size), jnp.float32))
    logits = _sampling_logits(logits, temperature, top_p)
    log_probs = reverse_log_probs(logits, params, t, s, eps=eps)
    last_probs = jnp.concatenate(
        [logits, jnp.full((batch_size, length, 1), -jnp.inf)], axis=-1)
    log_probs = jnp.where(i == num_steps - 1, last_probs, log_probs)
    new = jax.random.categorical(jax.random.fold_in(key, i), log_probs, axis=-1)
    x = jnp.where(masked, new.astype(x.dtype), x)
    return x, nfe + call.astype(jnp.int32)

  x, nfe = jax.lax.fori_loop(0, num_steps, body, (x_init, jnp.int32(0)))
  return (x, nfe) if return_nfe else x


# ----------------------------------------------------------------------------
# Exact references for enumerable joints.


def exact_denoiser(probs, params: GenMD4Params, vocab_size: int, length: int, *,
                   eps: float = MD4_EPS, log_floor: float = -1e4):
  """The optimal denoiser of the joint ``probs`` [V^N] under the GenMD4 schedule.

  Returns ``denoise_fn(x_t, t) -> logits [B, N, V]``, the log of

    p(x_0^n = v | x_t, t) ∝ sum_{y: y_U = x_U, y^n = v} p(y) prod_{k masked} (1 - alpha_{y^k}(t)),

  U the unmasked positions (their factors alpha_{x_t^k}(t) are common to every
  compatible y and cancel). Unlike MD4's, it depends on t and on the exponents;
  with equal exponents it reduces to ``exact.exact_denoiser``. ``log_floor``
  stands for log 0; a context of probability 0 gives uniform logits.
  """
  probs, seqs, one_hot = exact.enumerable_joint(probs, vocab_size, length)  # [S, N, V]
  if params.raw_w.shape != (vocab_size,):
    raise ValueError(f"params must hold {vocab_size} exponents, got {params.raw_w.shape}")
  log_p = jnp.where(probs > 0, jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)

  def denoise_fn(xt, t, *unused):
    del unused
    masked = xt == vocab_size                                          # [B, N]
    log_mask = log_mask_prob(params, jnp.asarray(t, jnp.float32), eps=eps)  # [B, V]
    per_pos = jnp.take_along_axis(log_mask[:, None, :],
                                  jnp.broadcast_to(seqs[None], (xt.shape[0],) + seqs.shape),
                                  axis=-1)                             # [B, S, N]
    compatible = jnp.all(masked[:, None, :] | (xt[:, None, :] == seqs[None]), axis=-1)
    log_w = log_p[None] + jnp.sum(jnp.where(masked[:, None, :], per_pos, 0.0), axis=-1)
    log_w = jnp.where(compatible, log_w, -jnp.inf)                     # [B, S]
    top = jnp.max(log_w, axis=-1, keepdims=True)
    weights = jnp.exp(log_w - jnp.where(jnp.isfinite(top), top, 0.0))
    return exact.conditional_logits(weights, one_hot, log_floor)

  return denoise_fn


def expected_nelbo(denoise_fn: DenoiseFn, x0, params: GenMD4Params, *,
                   eps: float = MD4_EPS, num_quadrature: int = 128,
                   time_power: float | None = None):
  """E_{t, x_t}[NELBO(x_0)] with the masks enumerated and t integrated, in nats.

  Each of the 2^N mask patterns M has probability
  q(M | x_0, t) = prod_{n in M} (1 - alpha_{x_0^n}(t)) prod_{n not in M} alpha_{x_0^n}(t),
  which depends on the token values. The integrand behaves like w t^{w-1} near
  t = 0, so t = u^p is substituted (p = ``time_power``, default max(1, 2 / min w),
  which makes the integrand in u vanish at 0) and u is integrated by
  Gauss-Legendre quadrature on ``num_quadrature`` nodes. Uses
  ``nelbo_from_logits`` with the enumerated x_t, so it checks that function without
  Monte Carlo error. Pure JAX (differentiable in ``params`` when ``time_power``
  is given). x0: int [N] or [S, N]; returns float32 [] or [S]. Small N only.
  """
  x0 = jnp.asarray(x0, jnp.int32)
  single = x0.ndim == 1
  x0 = jnp.atleast_2d(x0)
  if time_power is None:
    if is_traced(params.raw_w):
      raise ValueError("expected_nelbo needs an explicit time_power for traced params")
    time_power = max(1.0, 2.0 / float(np.min(np.asarray(exponents(params)))))
  out = jax.jit(_expected_nelbo, static_argnums=(0, 3, 4, 5))(
      denoise_fn, x0, params, float(eps), int(num_quadrature), float(time_power))
  return out[0] if single else out


def _expected_nelbo(denoise_fn, x0, params, eps, num_quadrature, time_power):
  vocab_size = params.raw_w.shape[-1]
  u, node_weights = exact.quadrature(num_quadrature, "gauss")
  dt = node_weights * time_power * u ** (time_power - 1.0)  # dt = p u^{p-1} du
  rows = exact.enumerate_masks(x0, u**time_power)
  xts = jnp.where(rows.masks, vocab_size, rows.x0)
  terms = nelbo_from_logits(denoise_fn(xts, rows.t), rows.x0, xts, rows.t, params, eps=eps)
  p_pattern = jnp.exp(log_forward_prob(params, rows.x0, xts, rows.t, eps=eps))
  return exact.expectation(terms["diffusion"] * p_pattern,
                           terms["reconstruction"] + terms["prior"], x0.shape[0],
                           jnp.asarray(dt, jnp.float32))
