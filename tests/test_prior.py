"""The learned prior: EM recovers a known mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import prior
from vmd_jax.losses import DiagonalGaussian


def test_em_recovers_a_known_mixture():
  truth = prior.GaussianMixture(jnp.log(jnp.array([0.2, 0.3, 0.5])),
                                jnp.array([[-4.0, 0.0], [0.0, 4.0], [4.0, -1.0]]),
                                jnp.log(jnp.array([[0.3, 0.5], [0.2, 0.2], [0.6, 0.1]])))
  z = truth.sample(jax.random.key(0), 30000)
  fit = prior.fit_gaussian_mixture(z, 3, jax.random.key(1), num_iters=100)
  order = np.argsort(np.asarray(fit.means[:, 0]))
  np.testing.assert_allclose(np.exp(fit.log_weights[order]), [0.2, 0.3, 0.5], atol=0.02)
  np.testing.assert_allclose(fit.means[order], truth.means, atol=0.05)
  np.testing.assert_allclose(np.exp(fit.logvars[order]), np.exp(truth.logvars), rtol=0.1)
  # The fitted likelihood matches the true one on held-out points.
  held = truth.sample(jax.random.key(2), 5000)
  assert abs(float(jnp.mean(fit.log_prob(held) - truth.log_prob(held)))) < 0.02
  weights = jnp.exp(fit.log_weights)
  np.testing.assert_allclose(float(weights.sum()), 1.0, rtol=1e-5)


def test_aggregate_posterior_fit_and_errors():
  q = DiagonalGaussian(jnp.repeat(jnp.array([[3.0, 3.0], [-3.0, -3.0]]), 500, axis=0),
                       jnp.full((1000, 2), np.log(0.01)))
  fit = prior.fit_aggregate_posterior_prior(q, jax.random.key(0), 2, num_iters=50)
  np.testing.assert_allclose(np.sort(np.asarray(fit.means[:, 0])), [-3.0, 3.0], atol=0.02)
  with pytest.raises(ValueError, match="need at least 5 points"):
    prior.fit_gaussian_mixture(jnp.zeros((3, 2)), 5, jax.random.key(0))


def numpy_em(z, gmm, num_iters, min_var):
  """The EM steps of ``fit_gaussian_mixture`` in float64 NumPy."""
  log_w, means, logvars = (np.asarray(a, np.float64) for a in gmm)
  z = np.asarray(z, np.float64)
  for _ in range(num_iters):
    log_n = -0.5 * np.sum(np.log(2 * np.pi) + logvars + (z[:, None] - means) ** 2
                          / np.exp(logvars), axis=-1)
    log_r = log_w + log_n
    resp = np.exp(log_r - log_r.max(-1, keepdims=True))
    resp /= resp.sum(-1, keepdims=True)
    mass = resp.sum(0) + 1e-8
    means = resp.T @ z / mass[:, None]
    var = resp.T @ z**2 / mass[:, None] - means**2
    log_w, logvars = np.log(mass / len(z)), np.log(np.maximum(var, min_var))
  return log_w, means, logvars


def test_em_compiles_once_per_shape_and_matches_numpy():
  z1 = jax.random.normal(jax.random.key(0), (300, 2)) * jnp.array([1.0, 3.0])
  z2 = jnp.concatenate([z1[:150] - 2.0, z1[150:] + 2.0])
  fits, cached = [], prior._em._cache_size()
  for z in (z1, z2):  # same shapes, other data: the EM loop is not compiled again
    fits.append(prior.fit_gaussian_mixture(z, 3, jax.random.key(1), num_iters=7))
    assert prior._em._cache_size() == cached + 1
  for z, fit in zip((z1, z2), fits):
    start = jax.random.choice(jax.random.key(1), 300, (3,), replace=False)
    init = (np.full(3, -np.log(3)), np.asarray(z)[start],
            np.broadcast_to(np.log(np.var(np.asarray(z), axis=0)), (3, 2)))
    for got, want in zip(fit, numpy_em(z, init, 7, 1e-4)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
