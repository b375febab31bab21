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
