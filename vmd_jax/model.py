"""A masked-diffusion model: Flax networks bound to the pure losses and samplers.

``MaskedDiffusion`` holds a ``Denoiser`` (and for VMD a ``LatentEncoder``) and a
schedule. It gives the trainer and the evaluator the same few calls whatever the
model kind: ``init``, ``loss`` (a dict of named per-sequence terms), ``nelbo``
and ``sample``. Parameters are ``{"denoiser": ..., "encoder": ...}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vmd_jax import losses, sampling
from vmd_jax.models import Denoiser, LatentEncoder
from vmd_jax.schedules import Schedule

Params = Any
PriorSampler = Callable[[jax.Array, int], jax.Array]  # (key, batch) -> z [B, D]


def standard_normal_prior(latent_dim: int) -> PriorSampler:
  return lambda key, batch: jax.random.normal(key, (batch, latent_dim))


@dataclasses.dataclass(frozen=True)
class MaskedDiffusion:
  """MD4 when ``encoder`` is None, VMD otherwise."""

  denoiser: Denoiser
  schedule: Schedule
  encoder: LatentEncoder | None = None
  beta: float = 0.1
  free_bits: float = 0.0
  loss_steps: int | None = None   # None: continuous-time NELBO
  antithetic: bool = True

  @property
  def vocab_size(self) -> int:
    return self.denoiser.vocab_size

  @property
  def latent_dim(self) -> int:
    return self.encoder.latent_dim if self.encoder is not None else 0

  def init(self, key, x0) -> Params:
    """Parameters for int [B, N] inputs like ``x0``."""
    k_den, k_enc = jax.random.split(key)
    t = jnp.zeros((x0.shape[0],), jnp.float32)
    z = jnp.zeros((x0.shape[0], self.latent_dim)) if self.encoder is not None else None
    params = {"denoiser": self.denoiser.init(k_den, x0, t, z)}
    if self.encoder is not None:
      params["encoder"] = self.encoder.init(k_enc, x0, x0)
    return params

  def denoise_fn(self, params, *, train: bool = False, rng=None):
    """``(x_t, t[, z]) -> logits``; dropout active when ``train`` (needs ``rng``)."""
    rngs = {"dropout": rng} if train else None
    def fn(xt, t, z=None):
      return self.denoiser.apply(params["denoiser"], xt, t, z, train=train, rngs=rngs)
    return fn

  def encode_fn(self, params, *, train: bool = False, rng=None):
    """``(x_0, x_t, t) -> (mean, logvar)``."""
    rngs = {"dropout": rng} if train else None
    def fn(x0, xt, t):
      del t
      return self.encoder.apply(params["encoder"], x0, xt, train=train, rngs=rngs)
    return fn

  def loss(self, params, x0, key, *, train: bool = False, t=None, noise=None):
    """Per-sequence terms in nats, each float32 [B]; ``loss`` is what to minimise.

    MD4: loss = nelbo. VMD: loss = nelbo(z) + beta * KL (see ``losses.vmd_loss``).
    """
    key, dropout_key, enc_key = jax.random.split(key, 3)
    common = dict(vocab_size=self.vocab_size, t=t, noise=noise,
                  num_steps=self.loss_steps, antithetic=self.antithetic)
    denoise = self.denoise_fn(params, train=train, rng=dropout_key)
    if self.encoder is None:
      terms = losses.md4_nelbo_terms(denoise, x0, key, self.schedule, **common)
      return {**terms, "loss": terms["nelbo"]}
    encode = self.encode_fn(params, train=train, rng=enc_key)
    return losses.vmd_loss(denoise, encode, x0, key, self.schedule, beta=self.beta,
                           free_bits=self.free_bits, **common)

  def sample(self, params, key, x_init, num_steps: int, order: str, *,
             prior: PriorSampler | None = None, **sampler_kwargs):
    """Samples (and the number of network calls) for ``x_init`` (mask id = V).

    VMD draws one z per sequence from ``prior`` (default N(0, I)) and keeps it
    for every step.
    """
    denoise = self.denoise_fn(params)
    if self.encoder is not None:
      z_key, key = jax.random.split(key)
      prior = prior or standard_normal_prior(self.latent_dim)
      z = prior(z_key, x_init.shape[0])
      fn = lambda xt, t: denoise(xt, t, z)
    else:
      fn = lambda xt, t: denoise(xt, t)
    return sampling.sample(fn, key, x_init, num_steps, self.schedule, order=order,
                           vocab_size=self.vocab_size, return_nfe=True, **sampler_kwargs)

  def encode_posteriors(self, params, x0):
    """q(z | x_0) for a batch with x_t all masks (what an x_0-only encoder sees),
    as ``losses.DiagonalGaussian``."""
    xt = jnp.full_like(x0, self.vocab_size)
    t = jnp.ones((x0.shape[0],), jnp.float32)
    return losses.DiagonalGaussian(*self.encode_fn(params)(x0, xt, t))
