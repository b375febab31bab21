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
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax import md4
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


def enumerable_joint(probs, vocab_size: int, length: int):
  """(probs float32 [V^N], every sequence int32 [V^N, N], their one-hot float
  [V^N, N, V]) for an exact denoiser (this module's, ``prime``'s, ``genmd4``'s);
  ``ValueError`` unless probs has V^N entries."""
  probs = jnp.asarray(probs, jnp.float32)
  if probs.shape != (vocab_size**length,):
    raise ValueError(f"probs must have shape [{vocab_size}**{length}], got {probs.shape}")
  seqs = jnp.asarray(all_sequences(vocab_size, length))
  return probs, seqs, jax.nn.one_hot(seqs, vocab_size)


def exact_denoiser(probs, vocab_size: int, length: int, log_floor: float = -1e4):
  """The optimal denoiser of the joint ``probs`` [V^N] as ``denoise_fn(x_t, t)``.

  Returns logits [B, N, V] = log p(x^n = v | unmasked tokens of x_t) (``log_floor``
  where that probability is 0). The time is ignored: the optimal denoiser of
  masked diffusion does not depend on it. A context of probability 0 gives
  uniform logits.
  """
  probs, seqs, one_hot = enumerable_joint(probs, vocab_size, length)  # one_hot [S, N, V]

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


def quadrature(num_points: int, rule: str = "midpoint"):
  """(nodes t [P], weights w [P]) on [0, 1], float64: ``midpoint`` (t_i = (i + 1/2) / P,
  w_i = 1 / P; also the exact average over a T-step grid's cells) or ``gauss``
  (Gauss-Legendre)."""
  if rule == "midpoint":
    return (np.arange(num_points) + 0.5) / num_points, np.full(num_points, 1.0 / num_points)
  if rule == "gauss":
    nodes, weights = np.polynomial.legendre.leggauss(num_points)
    return (nodes + 1.0) / 2.0, weights / 2.0
  raise ValueError(f"unknown quadrature rule {rule!r}; known: ['gauss', 'midpoint']")


class MaskEnumeration(NamedTuple):
  """Every (sequence, time, mask pattern) row of an exact expectation, in that
  order: ``x0`` int [R, N], ``t`` float32 [R], ``masks`` bool [R, N, ...] (True:
  masked) and ``noise`` float32 like masks, the uniforms that give exactly these
  masks (1 - 1e-7 where masked: above any alpha < 1; 0 elsewhere)."""

  x0: jax.Array
  t: jax.Array
  masks: jax.Array
  noise: jax.Array


def enumerate_masks(x0, t, units_per_token: int | None = None) -> MaskEnumeration:
  """The rows of E_t E_{x_t}[f(x_0, x_t, t)] with the masks enumerated (small N only):
  each of the S sequences x0 [S, N], at each of the T times t [T], with each of
  the 2^(N u) patterns over its N ``units_per_token`` = u maskable units (masks
  [R, N, u]; Prime's digits: u = l), or over its N tokens (None: masks [R, N]). Behind ``expected_nelbo``, ``prime.expected_nelbo``
  and ``genmd4.expected_nelbo``; ``mask_probability`` and ``expectation`` finish."""
  num_seqs, length = x0.shape
  unit_shape = (length,) if units_per_token is None else (length, units_per_token)
  patterns = all_sequences(2, int(np.prod(unit_shape))).astype(bool).reshape(
      (-1,) + unit_shape)
  cells, num_patterns = len(t), len(patterns)
  masks = jnp.tile(jnp.asarray(patterns), (num_seqs * cells,) + (1,) * len(unit_shape))
  return MaskEnumeration(
      x0=jnp.repeat(jnp.asarray(x0), cells * num_patterns, axis=0),
      t=jnp.tile(jnp.repeat(jnp.asarray(t, jnp.float32), num_patterns), num_seqs),
      masks=masks, noise=jnp.where(masks, jnp.float32(1.0 - 1e-7), jnp.float32(0.0)))


def mask_probability(masks, alpha):
  """P(M | t) = prod (1 - alpha)^[masked] alpha^[kept] of each row's pattern,
  float64 [R], from masks [R, ...] and each row's alpha(t) [R]."""
  alpha = np.asarray(alpha, np.float64).reshape((-1,) + (1,) * (masks.ndim - 1))
  masks = np.asarray(masks)
  return np.prod(np.where(masks, 1.0 - alpha, alpha), axis=tuple(range(1, masks.ndim)))


def expectation(weighted, boundary, num_seqs: int, time_weights):
  """Per sequence [S]: sum over the patterns and times of ``weighted`` [R] (each
  row's value times its pattern's probability), times weighted by
  ``time_weights`` [T], plus ``boundary`` [R] (the same on every row of a
  sequence). Works on NumPy and JAX arrays alike."""
  per_time = weighted.reshape(num_seqs, len(time_weights), -1).sum(-1)
  return (per_time * time_weights).sum(-1) + boundary.reshape(num_seqs, -1)[:, 0]


def expected_nelbo(denoise_fn, x0, schedule, vocab_size: int, *,
                   num_steps: int | None = None, num_quadrature: int = 1000):
  """E_{t, x_t}[NELBO(x_0)] with the masks enumerated and t integrated, in nats.

  For each of the 2^N mask patterns M, P(M | t) = (1 - alpha)^|M| alpha^(N - |M|);
  continuous time integrates t by the midpoint rule on ``num_quadrature`` points,
  discrete time averages the T grid cells exactly. Uses ``md4.nelbo_terms``
  with explicit t and noise, so it checks that function without Monte Carlo
  error. x0: int [N] or [S, N]; returns a float or float64 [S]. Small N only.
  """
  x0 = np.asarray(x0, np.int32)
  single = x0.ndim == 1
  x0 = np.atleast_2d(x0)
  t, w = quadrature(num_quadrature if num_steps is None else num_steps)
  rows = enumerate_masks(x0, t)
  terms = jax.jit(lambda x, t, u: md4.nelbo_terms(
      denoise_fn, x, None, schedule, vocab_size=vocab_size, t=t, noise=u,
      num_steps=num_steps))(rows.x0, rows.t, rows.noise)
  p_pattern = mask_probability(rows.masks, schedule.alpha(terms["t"]))
  out = expectation(np.asarray(terms["diffusion"], np.float64) * p_pattern,
                    np.asarray(terms["reconstruction"] + terms["prior"], np.float64),
                    len(x0), w)
  return float(out[0]) if single else out
