"""Block diffusion (BD3-LM, Arriola et al. 2025): the block NELBO and a block sampler.

Pure JAX over callables, no config. Tokens x_0 in {0..V-1}^L, mask id V, L split
into K = L / L' blocks of L' tokens; x^b is block b, x^{<b} the blocks before it.

Likelihood (Arriola et al. 2025, arXiv:2503.09573):

  log p(x_0) = sum_b log p(x^b | x^{<b}),

and every block gets its own masked diffusion with its own time t_b, conditioned
on the clean earlier blocks:

  L_block = sum_b E_{t_b ~ U(0,1)} [ -alpha'(t_b) / (1 - alpha(t_b))
                 * sum_{n in b: x_t^n = m} -log p_theta(x_0^n | x_t^b, x_0^{<b}, t_b) ]
            + L (1 - alpha(0)) log V + L alpha(1) log V.

L' = L is MD4's NELBO (``md4.nelbo_terms``); L' = 1 with eps = 0 is the
autoregressive loss sum_n -log p(x^n | x^{<n}) (the one-token block is masked
with probability 1 - alpha(t) and int_0^1 -alpha'(t) dt = 1).

Vectorised training: one network call on the 2L tokens [x_t ; x_0] with RoPE
positions [0..L-1, 0..L-1] and ``block_diffusion_mask`` (``vectorised_logits``;
``vmd_jax.judge`` uses it too, for exact AR likelihoods at L' = 1). Clean tokens
carry time t = 0 (they are x at time 0), in training as in the sampler's prefill.

The callable interface (``BlockDenoiseFn``), shared by the loss and the sampler:

  denoise_fn(x int [B, n], t float [B, n], positions int [1, n],
             mask bool [n, M + n], kv_prefix=None, *, z=None) -> logits [B, n, V]
  prefill_fn(x, t, positions, mask, kv_prefix=None, *, z=None)
      -> per layer (k, v), each [B, n, ...]  (the keys/values of these n tokens)

``kv_prefix`` is None or, per layer, (k, v) [B, M, ...] of M earlier tokens; the
mask covers [prefix keys ; own keys]. ``z`` (VMD) is a latent per token
[B, n, D], only passed when the caller gives one. ``denoiser_fns`` builds both
from a ``vmd_jax.networks.Denoiser`` and its params (``vmd_jax.networks.adapters``).
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from vmd_jax.forward import check_logits, check_times, check_tokens, mask_tokens
from vmd_jax.losses import (DiagonalGaussian, diffusion_weight, nelbo_from_logits,
                            stratified_times, uniform_times, vmd_terms)
from vmd_jax.sampling import check_settings, sample_unchecked

BlockDenoiseFn = Callable[..., jax.Array]
PrefillFn = Callable[..., list]


def num_blocks(seq_len: int, block_size: int) -> int:
  """K = L / L'. The one place that checks that L' >= 1 (an integer, NumPy's
  included, not a bool) divides L."""
  if (isinstance(block_size, numbers.Integral) and not isinstance(block_size, bool)
      and block_size >= 1 and seq_len % block_size == 0):
    return seq_len // int(block_size)
  raise ValueError(f"block_size must be an int >= 1 that divides the sequence length "
                   f"{seq_len}, got block_size={block_size!r}")


def block_ids(seq_len: int, block_size: int):
  """The block of every position, n // L', int32 [L]."""
  num_blocks(seq_len, block_size)
  return jnp.arange(seq_len, dtype=jnp.int32) // block_size


def block_causal_mask(seq_len: int, block_size: int):
  """bool [L, L]: query n may attend key k iff block(k) <= block(n)."""
  ids = block_ids(seq_len, block_size)
  return ids[:, None] >= ids[None, :]


def block_diffusion_mask(seq_len: int, block_size: int):
  """BD3-LM's mask for the vectorised input [x_t ; x_0], bool [2L, 2L].

  With b(n) the block of position n (queries rows, keys columns):

    noisy query n, noisy key k:  b(k) == b(n)   (its own noisy block)
    noisy query n, clean key k:  b(k) <  b(n)   (the clean earlier blocks)
    clean query n, noisy key k:  never
    clean query n, clean key k:  b(k) <= b(n)   (block-causal)
  """
  ids = block_ids(seq_len, block_size)
  same = ids[:, None] == ids[None, :]
  before = ids[:, None] > ids[None, :]
  causal = ids[:, None] >= ids[None, :]
  top = jnp.concatenate([same, before], axis=1)
  bottom = jnp.concatenate([jnp.zeros_like(same), causal], axis=1)
  return jnp.concatenate([top, bottom], axis=0)


def clipped_rate_times(schedule, u, clip):
  """BD3-LM's clipped mask rate: the times t with 1 - alpha(t) = beta + (omega - beta) u
  for uniforms u in (0, 1] and clip = (beta, omega); at least float32's smallest
  positive number, since a rate below the schedule's least, 1 - alpha(0) = eps,
  inverts to t = 0, where a polynomial schedule with k < 1 has an infinite weight."""
  beta, omega = clip
  t = schedule.inverse(1.0 - (beta + (omega - beta) * u))
  return jnp.maximum(t, jnp.finfo(jnp.float32).tiny)


def per_token(values, block_size: int):
  """Repeats per-block values [B, K, ...] to per-token values [B, K L', ...]."""
  return jnp.repeat(values, block_size, axis=1)


def previous_blocks(x, block_size: int, fill: int):
  """x [B, L] shifted right by one block, the first block all ``fill``: block b
  of the result is x^{b-1}. A block-causal reader of it (VMD's conditional
  prior) sees at block b the blocks < b of x, and nothing of x^b or later."""
  num_blocks(x.shape[1], block_size)
  start = jnp.full((x.shape[0], block_size), fill, x.dtype)
  return jnp.concatenate([start, x[:, :-block_size]], axis=1)


def vectorised_vocab_size(denoise_fn: BlockDenoiseFn, x0, *, z=None) -> int:
  """V, from the shape of the logits ``denoise_fn`` would give on the vectorised
  input of x0 int [B, L] (traced abstractly: no computation)."""
  batch_size, seq_len = x0.shape
  args = (jax.ShapeDtypeStruct((batch_size, 2 * seq_len), x0.dtype),
          jax.ShapeDtypeStruct((batch_size, 2 * seq_len), jnp.float32),
          jnp.zeros((1, 2 * seq_len), jnp.int32), jnp.zeros((2 * seq_len,) * 2, bool))
  kw = {} if z is None else {"z": jnp.zeros(z.shape[:1] + (2 * seq_len,) + z.shape[2:])}
  return jax.eval_shape(lambda *a: denoise_fn(*a, **kw), *args).shape[-1]


def vectorised_logits(denoise_fn: BlockDenoiseFn, xt, x0, t_tok, block_size: int, *,
                      vocab_size: int | None = None, z=None):
  """The logits of every noisy block given the clean earlier blocks, in ONE call.

  The call is BD3-LM's vectorised pass: the 2L tokens [x_t ; x_0] with times
  [t_tok ; 0] (clean tokens are x at time 0), RoPE positions [0..L-1, 0..L-1]
  and ``block_diffusion_mask``, so that noisy position n sees its own noisy block
  and the clean blocks before it. The x_0 half's logits are dropped.

  Args:
    denoise_fn: the ``BlockDenoiseFn`` (module docstring).
    xt: int [B, L] noisy tokens (mask id V where masked); x0: int [B, L] clean
      (Prime: digits [B, L, l]); both checked by the caller (``block_nelbo_terms``,
      ``prime.block_nelbo_terms``, ``judge.autoregressive_log_probs``).
    t_tok: float [B, L] the time of each noisy token (its block's).
    block_size: L', dividing L.
    vocab_size: V, to check the logits' shape (unchecked when None).
    z: optional float [B, K, D] latent per block, passed per token to both halves.

  Returns:
    float logits [B, L, V] of the noisy half.
  """
  chex.assert_equal_shape([xt, x0])
  batch_size, seq_len = x0.shape[:2]
  chex.assert_shape(t_tok, (batch_size, seq_len))
  x_in = jnp.concatenate([xt, x0], axis=1)
  t_in = jnp.concatenate([t_tok, jnp.zeros_like(t_tok)], axis=1)
  positions = jnp.tile(jnp.arange(seq_len, dtype=jnp.int32), 2)[None]
  mask = block_diffusion_mask(seq_len, block_size)
  kw = {}
  if z is not None:
    chex.assert_rank(z, 3)
    z_tok = per_token(z, block_size)
    kw["z"] = jnp.concatenate([z_tok, z_tok], axis=1)
  logits = denoise_fn(x_in, t_in, positions, mask, **kw)
  chex.assert_shape(logits, (batch_size, 2 * seq_len, vocab_size))
  return logits[:, :seq_len]


def block_nelbo_terms(denoise_fn: BlockDenoiseFn, x0, key, schedule, block_size: int, *,
                      vocab_size: int | None = None, t=None, noise=None,
                      clip=(0.0, 1.0), z=None, num_steps: int | None = None,
                      antithetic: bool = True):
  """The block-diffusion NELBO (module docstring), one t per block and sequence.

  One network call on [x_t ; x_0] (length 2L) with ``block_diffusion_mask``;
  the logits of the x_0 half are ignored.

  Clipped schedule (BD3-LM): with ``clip = (beta, omega)`` other than (0, 1) the
  mask rate r = 1 - alpha(t) is drawn uniformly in [beta, omega], i.e.
  t = alpha^{-1}(1 - r), and the weight stays -alpha'(t) / (1 - alpha(t)). This
  is a lower-variance training objective, NOT a bound on -log p(x_0): evaluate
  with the default (0, 1).

  Args:
    denoise_fn: ``(x [B, 2L], t [B, 2L], positions [1, 2L], mask [2L, 2L]) ->
      logits [B, 2L, V]`` (with ``z=`` [B, 2L, D] when ``z`` is given).
    x0: int [B, L] clean tokens in [0, V).
    key: PRNG key for t (unless given) and the masking noise (unless given).
    schedule: a ``vmd_jax.schedules.Schedule``.
    block_size: L', dividing L.
    vocab_size: V; inferred from the logits' shape when None.
    t: optional float [B, K] uniforms in [0, 1]: the block times themselves for
      clip = (0, 1), else mapped through the clipped mask rate.
    noise: optional float [B, L] masking uniforms (position n of block b is
      masked iff noise >= alpha(t_b)).
    clip: (beta, omega), the range of the mask rate; see above.
    z: optional float [B, K, D] latent per block (VMD), passed per token.
    num_steps: None for continuous time, else the T-step discrete NELBO per block
      (as in ``md4.nelbo_terms``).
    antithetic: draw each block's times stratified over the batch
      (``losses.stratified_times``, an independent offset per block), else i.i.d.

  Returns:
    dict of float32 [B] in nats: ``diffusion``, ``reconstruction``, ``prior``,
    ``nelbo`` (their sum); ``per_token`` [B, L] (each token's share, summing to
    ``nelbo``), ``per_block`` [B, K] (each block's share), ``t`` [B, K] the time
    of each block's x_t, and ``xt`` [B, L].
  """
  chex.assert_rank(x0, 2)
  t, weight, noise = block_draws(key, schedule, x0.shape, block_size, t=t, noise=noise,
                                 clip=clip, num_steps=num_steps, antithetic=antithetic)
  if vocab_size is None:
    vocab_size = vectorised_vocab_size(denoise_fn, x0, z=z)
  check_tokens(x0, vocab_size, name="x0")
  # x_t block by block: each block is an MD4 forward draw at its own time.
  xt = mask_tokens(x0.reshape(-1, block_size), t.reshape(-1), schedule, vocab_size,
                   noise=noise.reshape(-1, block_size)).reshape(x0.shape)

  logits = vectorised_logits(denoise_fn, xt, x0, per_token(t, block_size), block_size,
                             vocab_size=vocab_size, z=z)

  terms = nelbo_from_logits(logits, x0, xt, per_token(weight, block_size), schedule,
                            vocab_size)
  return {**terms, "per_block": sum_per_block(terms["per_token"], block_size), "t": t,
          "xt": xt}


def block_draws(key, schedule, noise_shape, block_size: int, *, t=None, noise=None,
                clip=(0.0, 1.0), num_steps: int | None = None, antithetic: bool = True):
  """The random inputs of a block NELBO (``block_nelbo_terms``, Prime's
  ``prime.block_nelbo_terms``): (t, weight, noise).

  t [B, K]: each block's time, as given or drawn from ``key`` (stratified over
  the batch with an independent offset per block, or i.i.d.), mapped through
  BD3-LM's clipped mask rate when ``clip`` is not (0, 1) and put on the T-step
  grid for ``num_steps``; weight [B, K] its diffusion weight
  (``losses.diffusion_weight``); noise float ``noise_shape`` = [B, L, ...] the
  masking uniforms, as given or drawn from ``key``."""
  batch_size, seq_len = noise_shape[:2]
  blocks = num_blocks(seq_len, block_size)
  beta, omega = clip
  if not 0.0 <= beta < omega <= 1.0:
    raise ValueError(f"clip must be (beta, omega) with 0 <= beta < omega <= 1, got {clip}")
  if key is None and (t is None or noise is None):
    raise ValueError("a block NELBO needs a key unless both t and noise are given")
  t_key, noise_key = jax.random.split(key) if key is not None else (None, None)
  if t is None:
    keys = jax.random.split(t_key, blocks)
    if antithetic:
      t = jax.vmap(lambda k: stratified_times(k, batch_size), out_axes=1)(keys)
    else:
      t = uniform_times(t_key, (batch_size, blocks))
  t = check_times(t)
  chex.assert_shape(t, (batch_size, blocks))
  if (beta, omega) != (0.0, 1.0):
    t = clipped_rate_times(schedule, t, clip)
  t, weight = diffusion_weight(schedule, t, num_steps)  # [B, K] each
  if noise is None:
    noise = jax.random.uniform(noise_key, noise_shape)
  chex.assert_shape(noise, tuple(noise_shape))
  return t, weight, noise


def sum_per_block(values, block_size: int):
  """Per-token values [B, L] summed within each block, [B, K]."""
  return values.reshape(values.shape[0], -1, block_size).sum(-1)


def block_nelbo(denoise_fn: BlockDenoiseFn, x0, key, schedule, block_size: int, **kwargs):
  """Per-sequence block NELBO in nats, float32 [B]; see ``block_nelbo_terms``."""
  return block_nelbo_terms(denoise_fn, x0, key, schedule, block_size, **kwargs)["nelbo"]


def block_vmd_loss(denoise_fn: BlockDenoiseFn, encode_fn: Callable, x0, key, schedule,
                   block_size: int, *, beta: float = 0.1, free_bits: float = 0.0,
                   prior_fn: Callable | None = None, **kwargs):
  """Block VMD: one latent per block, z_b ~ q(z_b | x_0) reparameterised, each
  with its prior p(z_b | x^{<b}) (``prior_fn``) or N(0, I); ``losses.vmd_terms``
  over ``block_nelbo_terms``, for users of the core (``MaskedDiffusion.loss``
  composes the same way):

    loss = L_block(x_0 | z_1..z_K) + beta * sum_b KL(q(z_b | x_0) || p(z_b | x^{<b})).

  With beta = 1 (and an encoder of x_0 alone, as here) nelbo + kl bounds
  -log p(x_0): each p(z_b | x^{<b}) sees only what the sampler has generated when
  it draws z_b (``block_sample``'s ``prior_fn``).

  Args:
    denoise_fn: as in ``block_nelbo_terms`` (takes ``z=`` [B, 2L, D]).
    encode_fn: ``x_0 [B, L] -> (mean, logvar)``, each float [B, K, D].
    prior_fn: None (N(0, I)) or ``x [B, L] -> (mean, logvar)`` [B, K, D], the
      conditional prior of block b from the blocks < b of x only.
    x0, key, schedule, block_size: as in ``block_nelbo_terms``.
    beta: KL weight; free_bits: nats per latent dimension and block below which
      the KL is not penalised (``losses.free_bits_kl``).
    **kwargs: passed to ``block_nelbo_terms`` (t, noise, clip, vocab_size, ...).

  Returns:
    ``block_nelbo_terms``'s dict (``nelbo`` conditioned on z) plus ``loss``,
    ``kl`` [B] (summed over blocks and dimensions) and ``bound`` = nelbo + kl.
  """
  chex.assert_rank(x0, 2)
  posterior = DiagonalGaussian(*encode_fn(x0))
  chex.assert_rank(posterior.mean, 3)
  chex.assert_axis_dimension(posterior.mean, 1, num_blocks(x0.shape[1], block_size))
  prior = None if prior_fn is None else DiagonalGaussian(*prior_fn(x0))
  objective = lambda k, z: block_nelbo_terms(denoise_fn, x0, k, schedule, block_size, z=z,
                                             **kwargs)
  return vmd_terms(objective, posterior, key, beta, free_bits, prior)


# ----------------------------------------------------------------------------
# Sampling.


def _z_kw(z, block_index, block_size, length=None):
  """The latent keyword for one block (length None) or the whole sequence."""
  if z is None:
    return {}
  if length is None:
    zb = jax.lax.dynamic_index_in_dim(z, block_index, axis=1, keepdims=True)
    return {"z": jnp.repeat(zb, block_size, axis=1)}
  return {"z": per_token(z, block_size)}


def _prefix_mask(prefix_len: int, block_size: int, block_index):
  """bool [L', P + L']: the first P cached keys, valid where they belong to
  blocks < b, then the block itself."""
  valid = jnp.arange(prefix_len) < block_index * block_size
  return jnp.concatenate([jnp.broadcast_to(valid, (block_size, prefix_len)),
                          jnp.ones((block_size, block_size), bool)], axis=1)


def _cache_prefix(cache, prefix_len: int | None):
  """The first P positions of every cached (k, v) (all of them for None); None
  when P = 0."""
  if prefix_len is None:
    return cache
  return jax.tree.map(lambda c: c[:, :prefix_len], cache) if prefix_len else None


def _prefix_len(cache, prefix_len: int | None) -> int:
  return jax.tree.leaves(cache)[0].shape[1] if prefix_len is None else prefix_len


def prefix_segments(blocks: int, num_segments: int) -> list[tuple[int, int, int]]:
  """Blocks [lo, hi) run together with the static cache prefix P = (hi - 1)
  blocks, the most any of them reads: (lo, hi, P in blocks) for ``num_segments``
  near-equal runs (fewer if there are fewer blocks). The attention over cached
  keys then costs about (1 + 1 / S) / 2 of attending over all L, at the price of
  S compiled copies of the block loop."""
  num_segments = max(1, min(num_segments, blocks))
  bounds = [-(-j * blocks // num_segments) for j in range(num_segments + 1)]
  return [(lo, hi, hi - 1) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def init_kv_cache(prefill_fn: PrefillFn, x, *, z=None):
  """A zero cache with room for all of x [B, L]: per layer (k, v) [B, L, ...]."""
  seq_len = x.shape[1]
  args = (x, jnp.zeros(x.shape, jnp.float32), jnp.arange(seq_len)[None],
          jnp.ones((seq_len, seq_len), bool), None)
  kw = {} if z is None else {"z": jnp.zeros(x.shape + z.shape[2:], jnp.float32)}
  shapes = jax.eval_shape(lambda *a: prefill_fn(*a, **kw), *args)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def cached_block_logits(denoise_fn: BlockDenoiseFn, x_block, t, block_index, cache,
                        block_size: int, *, z=None, prefix_len: int | None = None):
  """Logits [B, L', V] of block b attending to the cache's blocks < b.

  x_block: int [B, L']; t: float [B]; cache: per layer (k, v) [B, L, ...] whose
  entries of blocks >= b are ignored (masked). prefix_len: attend over the first
  P cached positions only (static, P >= b L'); None: all L.
  """
  prefix_len = _prefix_len(cache, prefix_len)
  positions = (block_index * block_size + jnp.arange(block_size))[None]
  t_tok = jnp.broadcast_to(t[:, None], x_block.shape)
  logits = denoise_fn(x_block, t_tok, positions,
                     _prefix_mask(prefix_len, block_size, block_index),
                     _cache_prefix(cache, prefix_len), **_z_kw(z, block_index, block_size))
  return check_logits(logits, x_block.shape[:2] + (None,), axes="[B, L', V]")


def uncached_block_logits(denoise_fn: BlockDenoiseFn, x_block, t, block_index, x,
                          block_size: int, *, z=None):
  """The same logits by one uncached call on the whole sequence x [B, L] (its
  blocks < b clean, block b replaced by x_block) with ``block_causal_mask``."""
  seq_len = x.shape[1]
  start = block_index * block_size
  x = jax.lax.dynamic_update_slice_in_dim(x, x_block, start, axis=1)
  in_block = block_ids(seq_len, block_size) == block_index
  t_tok = jnp.where(in_block[None], t[:, None], 0.0)
  logits = denoise_fn(x, t_tok, jnp.arange(seq_len)[None],
                      block_causal_mask(seq_len, block_size), None,
                      **_z_kw(z, block_index, block_size, seq_len))
  return jax.lax.dynamic_slice_in_dim(
      check_logits(logits, x.shape[:2] + (None,), axes="[B, L, V]"), start, block_size, axis=1)


def prefill_block(prefill_fn: PrefillFn, x_block, block_index, cache, block_size: int, *,
                  z=None, prefix_len: int | None = None):
  """Runs the clean block b (t = 0) once, attending to the cache's blocks < b
  (its first ``prefix_len`` positions, as in ``cached_block_logits``), and writes
  its (k, v) into the cache at positions [b L', (b + 1) L')."""
  prefix_len = _prefix_len(cache, prefix_len)
  start = block_index * block_size
  positions = (start + jnp.arange(block_size))[None]
  new = prefill_fn(x_block, jnp.zeros(x_block.shape, jnp.float32), positions,
                   _prefix_mask(prefix_len, block_size, block_index),
                   _cache_prefix(cache, prefix_len), **_z_kw(z, block_index, block_size))
  return jax.tree.map(
      lambda c, n: jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), start, axis=1),
      cache, new)


def _check_blockwise(x_init, block_size, prefill_fn, use_cache, cache_segments) -> int:
  """K, once the block loop's arguments are checked."""
  blocks = num_blocks(x_init.shape[1], block_size)
  if use_cache and prefill_fn is None:
    raise ValueError("use_cache=True needs a prefill_fn")
  if not isinstance(cache_segments, int) or cache_segments < 1:
    raise ValueError(f"cache_segments must be an int >= 1, got {cache_segments!r}")
  return blocks


def block_sample(denoise_fn: BlockDenoiseFn, prefill_fn: PrefillFn | None, key, x_init,
                 block_size: int, num_steps_per_block: int, schedule,
                 order: str = "ancestral", *, vocab_size: int | None = None,
                 temperature: float = 1.0, top_p: float | None = None,
                 grid: str = "linear", skip_idle: bool = True,
                 use_cache: bool = True, cache_segments: int = 4, z=None,
                 prior_fn: Callable | None = None, return_nfe: bool = False):
  """Generates the masked positions of x_init block by block, left to right.

  Block b is generated by ``sampling.sample`` (any of its orders, with key
  fold_in(key, b)) with a denoiser that sees block b at time t and the clean
  blocks < b. With ``use_cache`` those are read from a preallocated KV cache
  [B, L, ...] per layer, masked by length; after block b is done it is run once
  more (``prefill_block``, t = 0) to write its keys/values (skipped for the last
  block). A cached call's cost grows with the keys it attends over, so the blocks
  run in ``cache_segments`` runs (``prefix_segments``), each reading only the
  cache prefix its last block needs: about (1 + 1/S) / 2 of the full-length
  attention, for S compiled copies of the block loop (S = 1: every call attends
  over all L keys). Without the cache every call recomputes the prefix: one call
  on the whole sequence with ``block_causal_mask``; the two give the same logits
  (up to float round-off) and so the same samples. Each run of blocks is a
  ``lax.scan``; wrap the call in ``jax.jit`` with the integer/str arguments static.

  Args:
    denoise_fn, prefill_fn: the ``BlockDenoiseFn`` interface (module docstring);
      prefill_fn may be None with use_cache=False.
    key: PRNG key.
    x_init: int [B, L]; the mask id V marks positions to generate, other
      positions (a prompt) are kept.
    block_size: L', dividing L.
    num_steps_per_block, order, temperature, top_p, grid, skip_idle: as in
      ``sampling.sample`` for each block.
    schedule: the ``Schedule`` the model was trained with.
    vocab_size: V; inferred from the logits' shape when None.
    use_cache: KV cache (True) or full recomputation (False).
    cache_segments: S, the runs of blocks with their own static cache prefix.
    z: optional float [B, K, D] latent per block (VMD: z_b ~ p(z) per block).
    prior_fn: optional, instead of z: ``x [B, L] -> (mean, logvar)`` [B, K, D],
      VMD's conditional prior p(z_b | x^{<b}); z_b is drawn from it once blocks
      < b are generated (x holds the mask id V from block b on), just before
      block b (``blockwise``).
    return_nfe: also return the number of denoiser calls (prefill calls not
      counted), int32 scalar.

  Returns:
    int [B, L] samples, or (samples, nfe).
  """
  check_settings(order, temperature, top_p)
  chex.assert_rank(x_init, 2)
  batch_size = x_init.shape[0]
  _check_blockwise(x_init, block_size, prefill_fn, use_cache, cache_segments)
  if vocab_size is None:
    probe_z = z
    if prior_fn is not None:
      probe_z = jnp.zeros(jax.eval_shape(prior_fn, x_init)[0].shape, jnp.float32)
    probe = jax.eval_shape(
        lambda x: uncached_block_logits(denoise_fn, x[:, :block_size], jnp.zeros(batch_size),
                                        0, x, block_size, z=probe_z), x_init)
    vocab_size = probe.shape[-1]
  check_tokens(x_init, vocab_size, allow_mask=True, name="x_init")

  def sample_block(logits_fn, block_key, x_block):
    return sample_unchecked(logits_fn, block_key, x_block, num_steps_per_block, schedule,
                            order, vocab_size, temperature=temperature, top_p=top_p,
                            grid=grid, skip_idle=skip_idle, return_nfe=True)

  x, nfe = blockwise(sample_block, denoise_fn, prefill_fn, key, x_init, block_size,
                     use_cache=use_cache, cache_segments=cache_segments, z=z,
                     prior_fn=prior_fn)
  return (x, nfe) if return_nfe else x


def blockwise(sample_block: Callable, denoise_fn: BlockDenoiseFn, prefill_fn: PrefillFn | None,
              key, x_init, block_size: int, *, use_cache: bool = True,
              cache_segments: int = 4, z=None, prior_fn: Callable | None = None,
              pack: Callable | None = None):
  """The left-to-right loop of ``block_sample``, for any sampler within a block.

  For b = 0..K-1: x^b <- sample_block(logits_fn, fold_in(key, b), x^b), where
  logits_fn(x_block, t) gives the denoiser's logits for block b at time t with
  the clean blocks < b as context (the KV cache, or recomputed), then block b
  is prefilled into the cache (not the last). ``x_init`` [B, L, ...] is sliced
  along axis 1; ``pack`` maps it to the int [B, L] tokens the cache machinery
  and the denoiser take (identity when None; Prime packs its digits). With
  ``prior_fn`` (``block_sample``), first z_b ~ N(mean_b, exp(logvar_b)) from
  prior_fn(pack(x)), with key fold_in(z_key, b), z_key split from ``key``: one
  prior call on the whole sequence per block (no cache of its own).

  Returns:
    (x, nfe): x like x_init, nfe the sum of sample_block's call counts (int32).
  """
  pack = pack or (lambda x: x)
  blocks = _check_blockwise(x_init, block_size, prefill_fn, use_cache, cache_segments)
  if prior_fn is not None:
    if z is not None:
      raise ValueError("give z or prior_fn, not both")
    z_key, key = jax.random.split(key)
    stats = jax.eval_shape(prior_fn, pack(x_init))[0]
    z = jnp.zeros(stats.shape, jnp.float32)
  cache = init_kv_cache(prefill_fn, pack(x_init), z=z) if use_cache else None

  def step(carry, b, prefix_len=None):
    x, cache, nfe, z = carry
    if prior_fn is not None:
      prior = DiagonalGaussian(*jax.tree.map(lambda a: a[:, b], prior_fn(pack(x))))
      z = z.at[:, b].set(prior.sample(jax.random.fold_in(z_key, b)))
    x_block = jax.lax.dynamic_slice_in_dim(x, b * block_size, block_size, axis=1)
    if use_cache:
      fn = lambda xb, t: cached_block_logits(denoise_fn, pack(xb), t, b, cache, block_size,
                                             z=z, prefix_len=prefix_len)
    else:
      fn = lambda xb, t: uncached_block_logits(denoise_fn, pack(xb), t, b, pack(x),
                                               block_size, z=z)
    x_block, calls = sample_block(fn, jax.random.fold_in(key, b), x_block)
    x = jax.lax.dynamic_update_slice_in_dim(x, x_block, b * block_size, axis=1)
    if use_cache:
      cache = jax.lax.cond(
          b < blocks - 1,
          lambda c: prefill_block(prefill_fn, pack(x_block), b, c, block_size, z=z,
                                  prefix_len=prefix_len),
          lambda c: c, cache)
    return (x, cache, nfe + calls, z), None

  carry = (x_init, cache, jnp.int32(0), z)
  segments = (prefix_segments(blocks, cache_segments) if use_cache
              else [(0, blocks, None)])
  for lo, hi, prefix_blocks in segments:
    prefix_len = None if prefix_blocks is None else prefix_blocks * block_size
    carry, _ = jax.lax.scan(functools.partial(step, prefix_len=prefix_len), carry,
                            jnp.arange(lo, hi, dtype=jnp.int32))
  x, _, nfe, _ = carry
  return x, nfe
