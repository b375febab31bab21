"""Judging samples: exact autoregressive likelihood under a block denoiser with
L' = 1, and two statistics of the samples themselves.

Pure JAX / NumPy over a ``block.BlockDenoiseFn``; no Flax, no config.

Generative bits per character (MDLM, BD3-LM and MD4 score samples with an
autoregressive model): block diffusion with one token per block is exactly an
autoregressive model (BD3-LM, Arriola et al. 2025, arXiv:2503.09573),

  log p(x) = sum_n log p(x^n | x^{<n}),

where p(x^n | x^{<n}) is the denoiser's distribution for position n with the
position itself masked at t = 1 (its whole one-token block masked) and the clean
prefix x^{<n} as context. ``autoregressive_log_probs`` computes all L of them in
one network call, on BD3-LM's vectorised [x_t ; x_0] layout
(``block.vectorised_logits``) with x_t all masks.

Relation to the judge's own test BPC (its block NELBO, ``block.block_nelbo_terms``
with L' = 1, eps = 0): the one-token block's NELBO is

  E_{t ~ U(0,1)} [ -alpha'(t) / (1 - alpha(t)) * 1[x_t^n = m] * -log p_t(x^n | x^{<n}) ]
    = E_{t ~ w} [ -log p_t(x^n | x^{<n}) ],   with density w(t) = -alpha'(t),

an average over t of the masked prediction. For a network without time input
(``configs/text8_judge.py``) p_t = p_1, so the NELBO is an unbiased estimate of
the exact score here (up to md4's eps shift: (1 - 2 eps) times it, plus
O(eps log V) boundary terms per token); with time input the two differ by how
much the prediction varies with t.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax.block import BlockDenoiseFn, vectorised_logits, vectorised_vocab_size
from vmd_jax.forward import check_tokens


def autoregressive_log_probs(denoise_fn: BlockDenoiseFn, x0, *,
                             vocab_size: int | None = None):
  """log p(x^n | x^{<n}) of every position under a block denoiser with L' = 1.

  One call of ``denoise_fn`` on [x_t ; x_0] (``block.vectorised_logits``,
  ``block_diffusion_mask(L, 1)``) with x_t = m (the mask id V) everywhere and
  every noisy token at time t = 1: noisy position n sees its own mask and the
  clean x^{<n}.

  Args:
    denoise_fn: the ``block.BlockDenoiseFn`` of a denoiser trained with L' = 1
      (``(x [B, 2L], t [B, 2L], positions [1, 2L], mask [2L, 2L]) -> logits
      [B, 2L, V]``).
    x0: int [B, L] tokens in [0, V).
    vocab_size: V (the mask id); inferred from the logits' shape when None.

  Returns:
    float32 [B, L]: log p(x0[b, n] | x0[b, :n]) in nats; the sum over n is
    log p(x0[b]).
  """
  chex.assert_rank(x0, 2)
  if vocab_size is None:
    vocab_size = vectorised_vocab_size(denoise_fn, x0)
  check_tokens(x0, vocab_size, name="x0")
  xt = jnp.full_like(x0, vocab_size)
  logits = vectorised_logits(denoise_fn, xt, x0, jnp.ones(x0.shape, jnp.float32), 1,
                             vocab_size=vocab_size)
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(log_probs, x0[..., None], axis=-1)[..., 0]


def bits_per_token(log_probs) -> float:
  """-sum(log_probs) / (count * ln 2): the mean negative log-likelihood in bits
  per token of log-probabilities in nats (any shape, pooled)."""
  log_probs = np.asarray(log_probs, np.float64)
  if log_probs.size == 0:
    raise ValueError("bits_per_token needs at least one log-probability, got none")
  return float(-log_probs.sum() / (log_probs.size * math.log(2)))


def unigram_entropy_bits(tokens, vocab_size: int) -> float:
  """H = -sum_v p_v log2 p_v of the pooled token distribution of ``tokens``.

  tokens: int [S, L] (any shape) in [0, V). p_v is the share of all S L tokens
  equal to v (the plug-in estimate; biased low by about (V - 1) / (2 S L ln 2)
  bits). Real text8 has about 4.1 bits per character; repetitive samples have
  far less.
  """
  tokens = np.asarray(tokens).ravel()
  if tokens.size == 0:
    raise ValueError("unigram_entropy_bits needs at least one token, got none")
  if tokens.min() < 0 or tokens.max() >= vocab_size:
    raise ValueError(f"tokens must be in [0, {vocab_size}), got values in "
                     f"[{tokens.min()}, {tokens.max()}]")
  p = np.bincount(tokens, minlength=vocab_size) / tokens.size
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no -0.0 for one symbol


def repeated_ngram_share(tokens, n: int = 4) -> float:
  """The share of n-gram occurrences that repeat an earlier n-gram of the same
  sample (Welleck et al. 2019's seq-rep-n, arXiv:1908.04319, pooled):

    sum_s (L - n + 1 - U_s) / (S (L - n + 1)),

  with U_s the number of distinct n-grams of sample s among its L - n + 1
  (overlapping) occurrences. 0 when no n-gram recurs within a sample; near 1
  for a sample looping a short pattern ("abababab", n = 4: 3 of 5). Counted
  within each sample, not across samples, so that common words in many samples
  are not mistaken for degenerate loops.

  tokens: int [S, L] with L >= n. Returns a float in [0, 1).
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[0] < 1:
    raise ValueError(f"tokens must be [S, L] with S >= 1, got shape {tokens.shape}")
  if not isinstance(n, int) or n < 1 or tokens.shape[1] < n:
    raise ValueError(f"n must be an int in [1, L = {tokens.shape[1]}], got {n!r}")
  windows = np.lib.stride_tricks.sliding_window_view(tokens, n, axis=1)  # [S, L-n+1, n]
  count = windows.shape[1]
  repeats = sum(count - len(np.unique(w, axis=0)) for w in windows)
  return repeats / (tokens.shape[0] * count)


def sample_statistics(tokens, vocab_size: int) -> dict:
  """``unigram_entropy_bits`` and ``repeated_4gram_share`` of tokens int [S, L]."""
  return {"unigram_entropy_bits": unigram_entropy_bits(tokens, vocab_size),
          "repeated_4gram_share": repeated_ngram_share(tokens, 4)}
