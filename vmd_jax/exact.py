"""Enumerable joint distributions over V^N and their exact denoiser.

For a joint p over all V^N sequences, the optimal masked-diffusion denoiser is
the true conditional of each masked token given the unmasked ones:

  p(x^n = v | x_U) = sum_{y: y_U = x_U, y^n = v} p(y) / sum_{y: y_U = x_U} p(y).

With it the continuous-time NELBO equals -log p(x_0) exactly, which makes these
the ground truth for tests, for the synthetic datasets' metrics and for
estimators' sanity checks. Pure JAX/NumPy; sizes up to V^N ~ 1e5.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax.forward import check_tokens


def all_sequences(vocab_size: int, length: int) -> np.ndarray:
  """Every sequence in lexicographic order, int32 [V^N, N]; row j is the base-V
  digits of j (big-endian)."""
  return np.array(list(itertools.product(range(vocab_size), repeat=length)), np.int32)


def sequence_index(x, vocab_size: int):
  """The row of ``all_sequences`` holding each sequence of x [..., N], int [...]."""
  x = jnp.asarray(x)
  powers = vocab_size ** jnp.arange(x.shape[-1] - 1, -1, -1)
  return jnp.sum(x * powers, axis=-1)


def conditional_logits(weights, one_hot, log_floor: float = -1e4):
  """log p(x^n = v | context), [B, N, V], from weights w [B, S] of the S sequences
  one_hot [S, N, V]:

    p(x^n = v | context_b) = sum_s w_bs 1[s^n = v] / sum_s w_bs,

  ``log_floor`` where it is 0, uniform where a row's weights are all 0. The sum is
  a full float32 matmul (``Precision.HIGHEST``): by default accelerators round
  float32 matmul inputs (to TF32 on GPUs, to bfloat16 passes on TPUs), which
  would make the exact denoisers exact to 3 digits only.
  """
  joint = jnp.einsum("bs,snv->bnv", weights, one_hot, precision=jax.lax.Precision.HIGHEST)
  total = jnp.sum(weights, axis=-1)[:, None, None]
  cond = jnp.where(total > 0, joint / jnp.where(total > 0, total, 1.0), 1.0 / one_hot.shape[-1])
  return jnp.where(cond > 0, jnp.log(jnp.where(cond > 0, cond, 1.0)), log_floor)


def exact_denoiser(probs, vocab_size: int, length: int, log_floor: float = -1e4):
  """The optimal denoiser of the joint ``probs`` [V^N] as ``denoise_fn(x_t, t)``.

  Returns logits [B, N, V] = log p(x^n = v | unmasked tokens of x_t) (``log_floor``
  where that probability is 0). The time is ignored: the optimal denoiser of
  masked diffusion does not depend on it. A context of probability 0 gives
  uniform logits.
  """
  probs = jnp.asarray(probs, jnp.float32)
  if probs.shape != (vocab_size**length,):
    raise ValueError(f"probs must have shape [{vocab_size}**{length}], got {probs.shape}")
  seqs = jnp.asarray(all_sequences(vocab_size, length))
  one_hot = jax.nn.one_hot(seqs, vocab_size)  # [S, N, V]

  def denoise_fn(xt, t=None, *unused):
    del t, unused
    compatible = jnp.all((xt[:, None, :] == vocab_size) | (xt[:, None, :] == seqs[None]),
                         axis=-1)  # [B, S]
    weights = compatible * probs[None]
    return conditional_logits(weights, one_hot, log_floor)

  return denoise_fn


def entropy(probs) -> float:
  """H(p) = -sum p log p in nats."""
  p = np.asarray(probs, np.float64)
  p = p[p > 0]
  return float(-np.sum(p * np.log(p)))


def empirical_distribution(samples, vocab_size: int) -> np.ndarray:
  """Histogram of int samples [S, N] over all V^N sequences, float64 [V^N].
  A value outside [0, V) (e.g. the mask id V) is a ValueError naming it."""
  samples = np.asarray(samples)
  check_tokens(samples, vocab_size, name="samples")
  idx = np.asarray(sequence_index(samples, vocab_size))
  counts = np.bincount(idx, minlength=vocab_size ** samples.shape[-1])
  return counts / max(len(idx), 1)


def total_variation(p, q) -> float:
  """TV(p, q) = sum |p - q| / 2."""
  return float(0.5 * np.sum(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64))))


def kl_divergence(p, q, floor: float = 1e-10) -> float:
  """KL(p || q) in nats, q floored at ``floor`` where p > 0 (empirical q may be 0)."""
  p = np.asarray(p, np.float64)
  q = np.maximum(np.asarray(q, np.float64), floor)
  support = p > 0
  return float(np.sum(p[support] * (np.log(p[support]) - np.log(q[support]))))


def product_of_marginals(probs, vocab_size: int, length: int) -> np.ndarray:
  """prod_n p(x^n), the joint a one-step sampler draws from, [V^N]."""
  p = np.asarray(probs, np.float64).reshape((vocab_size,) * length)
  out = np.ones_like(p)
  for n in range(length):
    axes = tuple(a for a in range(length) if a != n)
    marginal = p.sum(axis=axes)
    shape = [1] * length
    shape[n] = vocab_size
    out = out * marginal.reshape(shape)
  return out.ravel()


def expected_nelbo(denoise_fn, x0, schedule, vocab_size: int, *,
                   num_steps: int | None = None, num_quadrature: int = 1000):
  """E_{t, x_t}[NELBO(x_0)] with the masks enumerated and t integrated, in nats.

  For each of the 2^N mask patterns M, P(M | t) = (1 - alpha)^|M| alpha^(N - |M|);
  continuous time integrates t by the midpoint rule on ``num_quadrature`` points,
  discrete time averages the T grid cells exactly. Uses ``losses.md4_nelbo_terms``
  with explicit t and noise, so it checks that function without Monte Carlo
  error. x0: int [N] or [S, N]; returns a float or float64 [S]. Small N only.
  """
  from vmd_jax.losses import md4_nelbo_terms  # local: losses is the heavier module

  x0 = np.asarray(x0, np.int32)
  single = x0.ndim == 1
  x0 = np.atleast_2d(x0)
  num_seqs, length = x0.shape
  patterns = all_sequences(2, length).astype(bool)  # True = masked
  cells = num_quadrature if num_steps is None else num_steps
  t = (np.arange(cells, dtype=np.float32) + 0.5) / cells
  # Rows ordered (sequence, time, pattern).
  tt = np.tile(np.repeat(t, len(patterns)), num_seqs)
  masks = np.tile(patterns, (num_seqs * cells, 1))
  x0s = np.repeat(x0, cells * len(patterns), axis=0)
  noise = np.where(masks, np.float32(1.0 - 1e-7), np.float32(0.0))
  terms = jax.jit(lambda x, t, u: md4_nelbo_terms(
      denoise_fn, x, None, schedule, vocab_size=vocab_size, t=t, noise=u,
      num_steps=num_steps))(jnp.asarray(x0s), jnp.asarray(tt), jnp.asarray(noise))
  alpha = np.asarray(schedule.alpha(terms["t"]), np.float64)[:, None]
  p_pattern = np.prod(np.where(masks, 1.0 - alpha, alpha), axis=-1)
  diffusion = np.asarray(terms["diffusion"], np.float64) * p_pattern
  boundary = float(terms["reconstruction"][0] + terms["prior"][0])
  out = diffusion.reshape(num_seqs, cells, -1).sum(-1).mean(-1) + boundary
  return float(out[0]) if single else out
