"""The NELBO machinery every objective shares, and VMD's latent.

Pure JAX: functions of arrays, a PRNG key and a ``denoise_fn`` callable; no Flax,
no config. All values are per sequence, in nats, shape [B]. Times (``draw_times``,
``diffusion_weight``), the NELBO from one draw's logits (``nelbo_from_logits``,
behind ``md4.nelbo_terms`` and ``block.block_nelbo_terms``), and VMD's latent on
any objective (``vmd_terms``, ``with_latent_kl``; ``vmd_loss`` is MD4's).

Notation: tokens x_0 in {0..V-1}^N, mask id m = V, schedule alpha(t), and
``denoise_fn(x_t, t) -> logits [B, N, V]`` (VMD: ``denoise_fn(x_t, t, z)``). The
logits cover the V tokens only, so the mask is never predicted.

MD4 continuous-time NELBO (Shi et al. 2024, eq. 4):

  L = E_{t~U(0,1)} [ -alpha'(t) / (1 - alpha(t))
                      * sum_{n: x_t^n = m} -log p_theta(x_0^n | x_t, t) ]
      + N (1 - alpha(0)) log V        (reconstruction)
      + N alpha(1) log V              (prior)

The last two terms vanish as eps -> 0 and make a zero-logit denoiser's NELBO
exactly N log V. With eps > 0 they make L a bound for the model whose prior
reveals each token with probability alpha(1) as a uniform value and whose
reconstruction of the eps fraction still masked at t = 0 is uniform; with the
exact denoiser L then lies within 2 eps (N log V - log p(x_0)) of -log p(x_0)
(equal at eps = 0), and its p-weighted mean is >= H(p). Discrete time with T steps: t = (floor(u T) + 1) / T, s = t - 1/T
and weight T (alpha(s) - alpha(t)) / (1 - alpha(t)) on the same cross-entropy.

VMD (Zhang et al. 2025): a latent z ~ q(z | x_0 [, x_t]) = N(mu, diag(sigma^2)),
the denoiser conditioned on z, and

  L_VMD = E_t E_{z~q} [ L_t(x_0 | z) ] + beta * KL(q(z | .) || N(0, I)).

With beta = 1 and an encoder that sees x_0 only this is a valid bound on
-log p(x_0) (``bound``); an encoder that also sees x_t gives no likelihood bound.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax.forward import check_times, is_traced

DenoiseFn = Callable[..., jax.Array]


def uniform_times(key, shape):
  """i.i.d. times t ~ U(0, 1], float32 of ``shape``: t = 1 - u with u ~ U[0, 1).

  Never 0, where the weight -alpha'(t) / (1 - alpha(t)) of a polynomial schedule
  with k < 1 is infinite while eps > 0 can still mask a token; at t = 1 every
  schedule's weight is finite."""
  return 1.0 - jax.random.uniform(key, shape)


def stratified_times(key, batch_size: int):
  """Low-variance times t_i = 1 - ((u_0 + i / B) mod 1) in (0, 1], one u_0 ~ U[0, 1),
  shape [B]: one time in each interval ((B - i - 1) / B, (B - i) / B]."""
  u0 = jax.random.uniform(key, ())
  return 1.0 - jnp.mod(u0 + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)


def discretize_times(t, num_steps: int):
  """Maps t in [0, 1] onto the T-step grid: returns (t', s) with
  t' = min(floor(t T) + 1, T) / T in {1/T, ..., 1} and s = t' - 1/T. T = num_steps,
  an int >= 1 (``ValueError`` otherwise)."""
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be an int >= 1 (None: continuous time), got {num_steps!r}")
  t_disc = jnp.minimum(jnp.floor(t * num_steps) + 1.0, num_steps) / num_steps
  return t_disc, t_disc - 1.0 / num_steps


def token_log_likelihood(logits, x0):
  """log softmax(logits)[x_0^n] for every position, float32 [B, N]."""
  chex.assert_rank(logits, 3)
  chex.assert_equal_shape_prefix([logits, x0], 2)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, x0[..., None], axis=-1)[..., 0]


def bits_per_token(nats, num_tokens):
  """Converts a NELBO in nats per sequence into bits per token: nats / (N ln 2),
  N = ``num_tokens`` >= 1."""
  if not is_traced(num_tokens) and not num_tokens >= 1:
    raise ValueError(f"num_tokens must be >= 1 (tokens per sequence), got {num_tokens!r}")
  return nats / (num_tokens * math.log(2.0))


def draw_times(key, batch_size, t, antithetic):
  """(key left for the masking noise, times [B]): ``t`` as given, else stratified
  (``antithetic``) or i.i.d. uniform times drawn from ``key``."""
  if t is not None:
    return key, check_times(t)
  key, t_key = jax.random.split(key)
  if antithetic:
    return key, stratified_times(t_key, batch_size)
  return key, uniform_times(t_key, (batch_size,))


def diffusion_weight(schedule, t, num_steps: int | None):
  """(the time of x_t, the weight on its masked cross-entropy), same shape as t.

  Continuous time: (t, -alpha'(t) / (1 - alpha(t))). T steps: (t', T (alpha(s) -
  alpha(t')) / (1 - alpha(t'))) with t', s from ``discretize_times``.
  """
  if num_steps is None:
    return t, schedule.weight(t)
  t_disc, s = discretize_times(t, num_steps)
  alpha_t, alpha_s = schedule.alpha(t_disc), schedule.alpha(s)
  return t_disc, num_steps * (alpha_s - alpha_t) / (1.0 - alpha_t)


def nelbo_from_logits(logits, x0, xt, weight, schedule, vocab_size: int) -> dict:
  """The NELBO's terms given one draw x_t and the denoiser's logits on it.

  The core shared by MD4, VMD and block diffusion (module docstring):

    diffusion = sum_{n: x_t^n = m} w^n * -log p(x_0^n | x_t),
    reconstruction = N (1 - alpha(0)) log V,   prior = N alpha(1) log V.

  Args:
    logits: float [B, N, V].
    x0, xt: int [B, N] clean and masked tokens, checked by the caller (the
      objective that drew x_t: ``md4.nelbo_terms``, ``block.block_nelbo_terms``).
    weight: float [B] (one time per sequence) or [B, N] (per token, blocks).
    schedule: the ``Schedule``; vocab_size: V.

  Returns:
    dict of float32 [B]: ``diffusion``, ``reconstruction``, ``prior``, ``nelbo``;
    and ``per_token`` [B, N], each token's share (summing to ``nelbo``).
  """
  batch_size, num_tokens = x0.shape
  chex.assert_shape(logits, (batch_size, num_tokens, vocab_size))
  weight = weight[:, None] if weight.ndim == 1 else weight
  # Both zeroed on unmasked tokens before the product: at t = 0 with alpha(0) = 1
  # the weight is inf, and a log-likelihood may be -inf (a -inf logit); inf * 0
  # would make value and gradient NaN.
  masked = xt == vocab_size
  weight = jnp.where(masked, weight, 0.0)
  log_lik = jnp.where(masked, token_log_likelihood(logits, x0), 0.0)
  diffusion_per_token = -weight * log_lik
  diffusion = jnp.sum(diffusion_per_token, axis=-1)
  log_v = math.log(vocab_size)
  one = jnp.ones((batch_size,), jnp.float32)
  recon = one * num_tokens * (1.0 - schedule.alpha(jnp.float32(0.0))) * log_v
  prior = one * num_tokens * schedule.alpha(jnp.float32(1.0)) * log_v
  per_token = diffusion_per_token + ((recon + prior) / num_tokens)[:, None]
  return {"diffusion": diffusion, "reconstruction": recon, "prior": prior,
          "nelbo": diffusion + recon + prior, "per_token": per_token}


# ----------------------------------------------------------------------------
# VMD: a diagonal Gaussian latent.


class DiagonalGaussian(NamedTuple):
  """q(z) = N(mean, diag(exp(logvar))), each [B, D]."""

  mean: jax.Array
  logvar: jax.Array

  def sample(self, key):
    """Reparameterised z = mean + exp(logvar / 2) * eps, eps ~ N(0, I)."""
    eps = jax.random.normal(key, self.mean.shape, self.mean.dtype)
    return self.mean + jnp.exp(0.5 * self.logvar) * eps

  def kl_per_dim(self, prior: "DiagonalGaussian | None" = None):
    """KL(q || p) per dimension, float32 [B, D], for p = N(mu_p, diag(exp(lv_p)))
    (``prior``; None: N(0, I)):

      (lv_p - lv_q + (exp(lv_q) + (mean - mu_p)^2) / exp(lv_p) - 1) / 2
        = ((mean - mu_p)^2 e^{-lv_p} + expm1(d) - d) / 2,   d = lv_q - lv_p,

    in the expm1 form (exp(d) - 1 - d cancels for small d, to < 0 in bfloat16)."""
    mean, logvar = self.mean.astype(jnp.float32), self.logvar.astype(jnp.float32)
    if prior is None:
      return 0.5 * (jnp.square(mean) + (jnp.expm1(logvar) - logvar))
    prior_mean, prior_logvar = (prior.mean.astype(jnp.float32),
                                prior.logvar.astype(jnp.float32))
    d = logvar - prior_logvar
    return 0.5 * (jnp.square(mean - prior_mean) * jnp.exp(-prior_logvar) + (jnp.expm1(d) - d))

  def kl_standard_normal(self):
    """KL(q || N(0, I)) in nats, float32 [B]."""
    return jnp.sum(self.kl_per_dim(), axis=-1)

  def log_prob(self, z):
    """log q(z), float32 [B]."""
    mean, logvar = self.mean.astype(jnp.float32), self.logvar.astype(jnp.float32)
    diff = jnp.asarray(z).astype(jnp.float32) - mean
    return -0.5 * jnp.sum(
        math.log(2 * math.pi) + logvar + jnp.square(diff) * jnp.exp(-logvar), axis=-1)


def free_bits_kl(kl_per_dim, free_bits: float):
  """Free bits (Kingma et al. 2016): sum_d max(KL_d, lambda), [B].

  Dimensions whose KL is below lambda nats get no gradient pushing them to the
  prior. ``free_bits = 0`` gives the plain KL.
  """
  if free_bits <= 0.0:
    return jnp.sum(kl_per_dim, axis=-1)
  return jnp.sum(jnp.maximum(kl_per_dim, free_bits), axis=-1)


def vmd_terms(objective: Callable, posterior, key, beta: float, free_bits: float,
              prior: "DiagonalGaussian | None" = None) -> dict:
  """VMD on any objective, the one place the latent is composed with a NELBO:

    z ~ q(z | .) reparameterised (key split first: (z key, objective key)),
    terms = objective(key, z),   then ``with_latent_kl(terms, q, beta, free_bits, prior)``.

  ``objective(key, z) -> terms``: a core objective (``md4.nelbo_terms``,
  ``block.block_nelbo_terms``, ``prime.nelbo_terms``, ``prime.block_nelbo_terms``)
  with its other arguments bound. ``posterior``: q as a ``DiagonalGaussian``, or
  for an encoder that sees x_t a function ``(x_t, t) -> DiagonalGaussian`` (MD4
  only: z is drawn once the objective has drawn x_t, and the KL is q's at the
  objective's returned ``xt`` and ``t``).
  """
  z_key, key = jax.random.split(key)
  if callable(posterior):
    terms = objective(key, lambda xt, t: posterior(xt, t).sample(z_key))
    posterior = posterior(terms["xt"], terms["t"])
  else:
    terms = objective(key, posterior.sample(z_key))
  return with_latent_kl(terms, posterior, beta, free_bits, prior)


def vmd_loss(denoise_fn: DenoiseFn, encode_fn: Callable, x0, key, schedule, *,
             beta: float = 0.1, free_bits: float = 0.0, **kwargs):
  """VMD objective  L_t(x_0 | z) + beta * KL(q || N(0, I)),  z ~ q reparameterised:
  ``vmd_terms`` over ``md4.nelbo_terms``, for users of the core (the trainer's
  ``MaskedDiffusion.loss`` composes the same way).

  Args:
    denoise_fn: ``(x_t, t, z [B, D]) -> logits [B, N, V]``.
    encode_fn: ``(x_0, x_t, t) -> (mean [B, D], logvar [B, D])``; an encoder of
      x_0 alone ignores its last two arguments (it still gets x_t and t).
    x0, key, schedule: as in ``md4.nelbo_terms``; **kwargs its other arguments
      (vocab_size, t, noise, num_steps, antithetic).
    beta: weight of the KL term (docs/vmd_settings.md: 0.1 works, 1 collapses).
    free_bits: nats per latent dimension below which the KL is not penalised.

  Returns:
    dict of float32 [B] in nats: ``loss`` (what to minimise), ``nelbo`` (the
    z-conditioned NELBO) and its terms ``diffusion``, ``reconstruction`` and
    ``prior`` as in ``md4.nelbo_terms``, ``kl`` (the true KL), ``bound`` =
    nelbo + kl (a bound on -log p(x_0) only for an x_0-only encoder), ``t``
    and ``xt``.
  """
  from vmd_jax import md4  # local: md4 imports this module

  chex.assert_rank(x0, 2)
  posterior = lambda xt, t: DiagonalGaussian(*encode_fn(x0, xt, t))
  objective = lambda k, z: md4.nelbo_terms(denoise_fn, x0, k, schedule, z=z, **kwargs)
  return vmd_terms(objective, posterior, key, beta, free_bits)


def with_latent_kl(terms: dict, posterior: DiagonalGaussian, beta: float,
                   free_bits: float, prior: DiagonalGaussian | None = None) -> dict:
  """Adds VMD's latent terms to a z-conditioned NELBO's ``terms``:

    kl = KL(q(z | .) || p(z | c)) summed over every latent (and block), [B];
    loss = nelbo + beta * free_bits_kl;  bound = nelbo + kl.

  ``prior``: p(z | c) of the posterior's shape, a Gaussian of what is visible at
  generation time c (block VMD: the blocks before each latent's block); None:
  N(0, I). With an encoder of x_0 alone, nelbo + kl bounds -log p(x_0 | c).
  """
  batch_size = terms["nelbo"].shape[0]
  kl_dims = posterior.kl_per_dim(prior).reshape(batch_size, -1)
  kl = jnp.sum(kl_dims, axis=-1)
  return {**terms, "loss": terms["nelbo"] + beta * free_bits_kl(kl_dims, free_bits),
          "kl": kl, "bound": terms["nelbo"] + kl}
