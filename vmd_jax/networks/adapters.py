"""Flax adapters: a network and its params as the pure library's callables.

The math in ``vmd_jax.losses``, ``sampling`` and ``block`` takes plain functions;
these build them from a ``Denoiser`` / ``LatentEncoder`` and a params tree:

  denoise_fn(x_t [B, N], t [B] [, z [B, D]]) -> logits [B, N, V]
  encode_fn(x_0, x_t, t) -> (mean, logvar)
  block_denoiser_fns: the ``block.BlockDenoiseFn`` pair (denoise, prefill).
"""

from __future__ import annotations

from vmd_jax.networks.transformer import KV_COLLECTION, collect_kv


def denoise_fn(denoiser, params, *, train: bool = False, rng=None):
  """``(x_t, t[, z]) -> logits`` of ``denoiser`` with ``params`` (its own subtree);
  dropout active when ``train`` (needs ``rng``)."""
  rngs = {"dropout": rng} if train else None

  def fn(xt, t, z=None):
    return denoiser.apply(params, xt, t, z, train=train, rngs=rngs)
  return fn


def encode_fn(encoder, params, *, train: bool = False, rng=None):
  """``(x_0, x_t, t) -> (mean, logvar)`` of a ``LatentEncoder`` (t unused)."""
  rngs = {"dropout": rng} if train else None

  def fn(x0, xt, t):
    del t
    return encoder.apply(params, x0, xt, train=train, rngs=rngs)
  return fn


def block_denoiser_fns(model, params, *, train: bool = False, rngs=None):
  """(denoise_fn, prefill_fn) of the ``BlockDenoiseFn`` interface for a
  ``Denoiser`` (its latent, if any, per token: "adaln"/"add").

  ``train`` turns dropout on in denoise_fn (``rngs`` then holds a "dropout" key).
  prefill_fn runs ``apply(..., mutable=["kv_cache"])`` and returns
  ``transformer.collect_kv`` of it: per layer the rotated (k, v) [B, n, H, Dh].
  """
  def denoise_fn(x, t, positions, mask, kv_prefix=None, *, z=None):
    return model.apply(params, x, t, z, positions=positions, attention_mask=mask,
                       kv_prefix=kv_prefix, train=train, rngs=rngs)

  def prefill_fn(x, t, positions, mask, kv_prefix=None, *, z=None):
    _, state = model.apply(params, x, t, z, positions=positions, attention_mask=mask,
                           kv_prefix=kv_prefix, mutable=[KV_COLLECTION])
    return collect_kv(state[KV_COLLECTION])

  return denoise_fn, prefill_fn
