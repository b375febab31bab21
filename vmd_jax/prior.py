"""A learned prior for VMD's latent: a Gaussian mixture fitted to the encodings.

VMD samples z ~ p(z) = N(0, I), but the encoder's posteriors q(z | x_0) need not
cover N(0, I): z drawn where no posterior lives decodes to garbage, which is
VMD's main one-step error (docs/vmd_settings.md). The remedy fitted here, after
training (a second stage), is the aggregate posterior
  q(z) = E_{x_0 ~ data} q(z | x_0)
approximated by a K-component diagonal Gaussian mixture
  p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)),
fitted by EM (maximum likelihood) to z drawn from q(z | x_0) over training data.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class GaussianMixture(NamedTuple):
  """log_weights [K] (normalised), means [K, D], logvars [K, D]."""

  log_weights: jax.Array
  means: jax.Array
  logvars: jax.Array

  def component_log_probs(self, z):
    """log pi_k + log N(z; mu_k, sigma_k^2), [M, K] for z [M, D]."""
    diff = z[:, None, :] - self.means[None]
    log_n = -0.5 * jnp.sum(math.log(2 * math.pi) + self.logvars[None]
                           + jnp.square(diff) * jnp.exp(-self.logvars[None]), axis=-1)
    return self.log_weights[None] + log_n

  def log_prob(self, z):
    """log p(z), [M]."""
    return jax.nn.logsumexp(self.component_log_probs(z), axis=-1)

  def sample(self, key, num: int):
    """z ~ p(z), [num, D]."""
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, self.log_weights, shape=(num,))
    noise = jax.random.normal(k_noise, (num, self.means.shape[-1]))
    return self.means[comp] + jnp.exp(0.5 * self.logvars[comp]) * noise


def fit_gaussian_mixture(z, num_components: int, key, num_iters: int = 200,
                         min_var: float = 1e-4) -> GaussianMixture:
  """EM for a diagonal Gaussian mixture on z [M, D]; means start at random points.

  E step: r_mk = softmax_k(log pi_k + log N(z_m; mu_k, sigma_k^2)).
  M step: pi_k = mean_m r_mk; mu_k, sigma_k^2 the r-weighted mean and variance
  (variance floored at ``min_var``). Each iteration does not lower the likelihood.
  One compile per (M, D, K, num_iters).
  """
  z = jnp.asarray(z, jnp.float32)
  m, _ = z.shape
  if m < num_components:
    raise ValueError(f"need at least {num_components} points to fit {num_components} "
                     f"components, got {m}")
  start = jax.random.choice(key, m, (num_components,), replace=False)
  var0 = jnp.maximum(jnp.var(z, axis=0), min_var)
  init = GaussianMixture(jnp.full((num_components,), -math.log(num_components)),
                         z[start], jnp.broadcast_to(jnp.log(var0), z[start].shape))
  return _em(z, init, min_var, num_iters=num_iters)


@functools.partial(jax.jit, static_argnames="num_iters")
def _em(z, init: GaussianMixture, min_var, *, num_iters: int) -> GaussianMixture:
  """``num_iters`` EM steps (``fit_gaussian_mixture``) from ``init`` on z [M, D]."""
  m = z.shape[0]

  def em_step(_, gmm):
    resp = jax.nn.softmax(gmm.component_log_probs(z), axis=-1)  # [M, K]
    mass = jnp.sum(resp, axis=0) + 1e-8
    # Full float32 matmuls: E[z^2] - E[z]^2 cancels, and accelerators' default
    # precision rounds matmul inputs (TF32 on GPUs, bfloat16 passes on TPUs).
    moment = lambda x: jnp.matmul(resp.T, x, precision=jax.lax.Precision.HIGHEST)
    means = moment(z) / mass[:, None]
    var = moment(jnp.square(z)) / mass[:, None] - jnp.square(means)
    return GaussianMixture(jnp.log(mass / m), means, jnp.log(jnp.maximum(var, min_var)))

  return jax.lax.fori_loop(0, num_iters, em_step, init)


def fit_aggregate_posterior_prior(posterior, key, num_components: int,
                                  num_iters: int = 200) -> GaussianMixture:
  """Draws one z from each q(z | x_0) of ``posterior`` (a DiagonalGaussian [M, D])
  and fits the mixture to them."""
  k_sample, k_fit = jax.random.split(key)
  z = posterior.sample(k_sample)
  return fit_gaussian_mixture(z, num_components, k_fit, num_iters)
