"""VMD's conditional prior p(z_b | x^{<b}) in the core: the Gaussian KL to it, the
shifted blocks it reads, the block loss's KL, and the block sampler drawing each
z_b from it once the blocks before b are generated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import block, exact
from vmd_jax.losses import DiagonalGaussian
from vmd_jax.schedules import get_schedule


def gaussian_kl(mean_q, var_q, mean_p, var_p):
  """KL(N(mean_q, diag var_q) || N(mean_p, diag var_p)) per row, from the textbook
  formula: (tr(S_p^-1 S_q) + d^T S_p^-1 d - D + log det S_p - log det S_q) / 2."""
  d = mean_q - mean_p
  return 0.5 * np.sum(var_q / var_p + d**2 / var_p - 1 + np.log(var_p) - np.log(var_q), -1)


def test_kl_to_a_gaussian_prior_is_the_textbook_kl():
  rng = np.random.default_rng(0)
  mq, mp = rng.normal(size=(2, 6, 3))
  lq, lp = rng.normal(scale=1.5, size=(2, 6, 3))
  q, p = DiagonalGaussian(jnp.asarray(mq), jnp.asarray(lq)), DiagonalGaussian(mp, lp)
  np.testing.assert_allclose(np.sum(q.kl_per_dim(p), -1),
                             gaussian_kl(mq, np.exp(lq), mp, np.exp(lp)), rtol=1e-5)
  standard = DiagonalGaussian(jnp.zeros((6, 3)), jnp.zeros((6, 3)))
  np.testing.assert_allclose(q.kl_per_dim(standard), q.kl_per_dim(), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(q.kl_per_dim(q), 0.0, atol=1e-7)


def test_previous_blocks_shift_by_one_block():
  x = jnp.arange(12).reshape(2, 6)
  np.testing.assert_array_equal(block.previous_blocks(x, 2, fill=-1),
                                [[-1, -1, 0, 1, 2, 3], [-1, -1, 6, 7, 8, 9]])
  with pytest.raises(ValueError, match="divides the sequence length 6, got block_size=4"):
    block.previous_blocks(x, 4, fill=-1)


def test_block_vmd_kl_is_to_the_prior_of_the_clean_earlier_blocks():
  """kl = sum_b KL(q(z_b | x_0) || p(z_b | x_0^{<b})): prior_fn reads x_0 (not
  x_t); with prior_fn = None the KL is to N(0, I)."""
  vocab, length, bs, batch, dim = 3, 6, 2, 4, 2
  x0 = jnp.asarray(np.random.default_rng(1).integers(0, vocab, (batch, length)), jnp.int32)
  mean_q = jnp.asarray(np.random.default_rng(2).normal(size=(batch, length // bs, dim)))
  encode = lambda x: (mean_q + x[:, ::bs, None], jnp.full(mean_q.shape, -0.5))
  prior_fn = lambda x: (jnp.cumsum(x, 1)[:, ::bs, None] * jnp.ones(dim) / 4,
                        jnp.full(mean_q.shape, 0.3))
  denoise = lambda x, t, positions, mask, kv_prefix=None, *, z: jnp.zeros(x.shape + (vocab,))
  kwargs = dict(beta=1.0, vocab_size=vocab)
  terms = block.block_vmd_loss(denoise, encode, x0, jax.random.key(0), get_schedule("linear"),
                               bs, prior_fn=prior_fn, **kwargs)
  mq, lq = map(np.asarray, encode(x0))
  mp, lp = map(np.asarray, prior_fn(x0))
  expected = gaussian_kl(mq, np.exp(lq), mp, np.exp(lp)).sum(-1)
  np.testing.assert_allclose(terms["kl"], expected, rtol=1e-5)
  np.testing.assert_allclose(terms["bound"], terms["nelbo"] + expected, rtol=1e-5)
  plain = block.block_vmd_loss(denoise, encode, x0, jax.random.key(0), get_schedule("linear"),
                               bs, **kwargs)
  np.testing.assert_allclose(plain["kl"], gaussian_kl(mq, np.exp(lq), 0.0, 1.0).sum(-1),
                             rtol=1e-5)
  assert float(jnp.min(jnp.abs(plain["kl"] - terms["kl"]))) > 1e-2


def sigmoid_mean(means, scale=2.0, nodes=80):
  """E[sigmoid(scale z)], z ~ N(mean, 1), by Gauss-Hermite quadrature."""
  x, w = np.polynomial.hermite_e.hermegauss(nodes)
  z = np.asarray(means)[..., None] + x
  return np.sum(w / (1 + np.exp(-scale * z)), -1) / np.sqrt(2 * np.pi)


@pytest.mark.parametrize("use_cache", [False, True])
def test_block_sampler_draws_z_from_the_prior_of_the_generated_prefix(use_cache):
  """Two one-token blocks over {0, 1}: p(x^b = 1 | z_b) = sigmoid(2 z_b), z_0 ~ N(0, 1)
  and z_1 ~ N(3 (2 x^0 - 1), 1), so p(x^0 = 1) = 1/2 and x^1 follows x^0 with
  probability E sigmoid(6 + 2 e) ~ 0.99. The sampler must draw z_1 after x^0."""
  vocab, length, num = 2, 2, 20000

  def denoise(x, t, positions, mask, kv_prefix=None, *, z):
    return jnp.concatenate([jnp.zeros_like(z), 2.0 * z], axis=-1)

  def prefill(x, t, positions, mask, kv_prefix=None, *, z):
    return [(jnp.zeros(x.shape + (1, 1)), jnp.zeros(x.shape + (1, 1)))]

  def prior_fn(x):
    first = x[:, 0]
    mean1 = jnp.where(first == vocab, 0.0, 3.0 * (2.0 * first - 1.0))
    mean = jnp.stack([jnp.zeros(x.shape[0]), mean1], axis=1)[..., None]
    return mean, jnp.zeros_like(mean)

  x = jax.jit(lambda key: block.block_sample(
      denoise, prefill, key, jnp.full((num, length), vocab, jnp.int32), 1, 1,
      get_schedule("linear"), "ancestral", vocab_size=vocab, use_cache=use_cache,
      prior_fn=prior_fn))(jax.random.key(3))
  p_follow = float(sigmoid_mean(3.0))
  target = 0.5 * np.array([[p_follow, 1 - p_follow], [1 - p_follow, p_follow]])
  # 20000 draws over 4 cells: the expected TV is about 0.006.
  tv = exact.total_variation(exact.empirical_distribution(x, vocab), target.ravel())
  assert tv < 0.02, tv
  # A prior blind to the prefix (z_1 ~ N(0, 1)) gives independent halves: TV 0.49.
  assert exact.total_variation(target.ravel(), np.full(4, 0.25)) > 0.4
  with pytest.raises(ValueError, match="give z or prior_fn, not both"):
    block.block_sample(denoise, prefill, jax.random.key(0), jnp.full((2, 2), vocab), 1, 1,
                       get_schedule("linear"), vocab_size=vocab, z=jnp.zeros((2, 2, 1)),
                       prior_fn=prior_fn)
