"""A masked-diffusion model: Flax networks bound to the pure losses and samplers.

``MaskedDiffusion`` holds a ``Denoiser`` (and for VMD a ``LatentEncoder``) and a
schedule. It gives the trainer and the evaluator the same few calls whatever the
model kind: ``init``, ``loss`` (a dict of named per-sequence terms), ``sample``
and ``encode_posteriors``. Parameters are ``{"denoiser": ..., "encoder": ...}``.

With ``learn_schedule`` the model is GenMD4 (``vmd_jax.genmd4``): one learned
exponent w_v per token value, alpha_v(t) = (1 - 2 eps)(1 - t^{w_v}) + eps, kept as
``params["schedule"] = {"raw_w": float [V]}`` (w = softplus(raw_w)) so the
optimizer, the EMA and checkpoints carry it. ``schedule`` (polynomial or linear)
gives the initial exponent and eps. Training differentiates ``genmd4.rloo_loss``
(value: the NELBO; gradient: pathwise + REINFORCE leave-one-out for the
exponents), evaluation uses ``genmd4.nelbo_terms`` and sampling
``genmd4.sample`` (ancestral only).

With ``block_size`` L' the model is block diffusion (``vmd_jax.block``): the
block NELBO in training and evaluation, blocks generated left to right with a KV
cache, and for VMD one latent per block (the encoder built with the same
``block_size``).

Block VMD with ``prior_encoder``: the latent's prior is conditional,
p(z_b | x^{<b}) = N(mean_b, diag(exp(logvar_b))), read by a block-causal
``LatentEncoder`` over V + 1 tokens (the mask id V meaning "not visible") from
``block.previous_blocks(x)``, so that block b's prior sees the blocks < b only.
It is trained with the model (the KL of ``loss`` is to it), kept
in ``params["prior"]``, and ``sample`` draws each z_b from it once the blocks
before b are generated.

With a denoiser of ``prime_digits`` l > 1 the model is MDM-Prime
(``vmd_jax.prime``): the denoiser reads digits, the NELBO is
``prime.nelbo_terms`` (blocks: ``prime.block_nelbo_terms``; VMD's latent is
composed with it in ``loss``, as with every objective), and ``sample`` takes and returns
tokens (mask id V), converting to digits and back inside.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vmd_jax import block, genmd4, losses, md4, prime, sampling
from vmd_jax.networks import adapters
from vmd_jax.forward import check_tokens
from vmd_jax.networks.denoiser import Denoiser
from vmd_jax.networks.encoder import LatentEncoder
from vmd_jax.networks.variant import Variant, check_variant
from vmd_jax.schedules import Schedule

Params = Any
PriorSampler = Callable[[jax.Array, int], jax.Array]  # (key, batch) -> z [B, D]


def standard_normal_prior(latent_dim: int) -> PriorSampler:
  return lambda key, batch: jax.random.normal(key, (batch, latent_dim))


@dataclasses.dataclass(frozen=True)
class MaskedDiffusion:
  """MD4 when ``encoder`` is None, VMD otherwise. "Off" is 0 for ``block_size``
  and ``loss_steps``, as in the config; which fields compose is
  ``variant.check_variant``'s, run on construction."""

  denoiser: Denoiser
  schedule: Schedule
  encoder: LatentEncoder | None = None
  beta: float = 0.1
  free_bits: float = 0.0
  loss_steps: int = 0             # 0: continuous-time NELBO; T: the T-step NELBO
  antithetic: bool = True
  block_size: int = 0             # 0: one block (plain masked diffusion)
  train_mask_rate: tuple[float, float] = (0.0, 1.0)  # block training's clipped rate
  learn_schedule: bool = False    # GenMD4: per-token exponents in params["schedule"]
  prior_encoder: LatentEncoder | None = None  # block VMD: p(z_b | x^{<b}); None: N(0, I)

  def __post_init__(self):
    check_variant(self.variant)

  @property
  def variant(self) -> Variant:
    """The fields ``check_variant`` reads."""
    enc = self.encoder
    return Variant(
        latent=enc is not None, encoder_sees_xt=enc is not None and enc.sees_xt,
        encoder_pooling=enc.pooling if enc is not None else "mean",
        latent_mode=self.denoiser.latent_mode, genmd4=self.learn_schedule,
        schedule=self.schedule.name, block_size=self.block_size or 0,
        train_mask_rate=tuple(self.train_mask_rate), prime_digits=self.denoiser.prime_digits,
        loss_steps=self.loss_steps or 0,
        prior="standard_normal" if self.prior_encoder is None else "conditional",
        vocab_size=self.vocab_size)

  @property
  def vocab_size(self) -> int:
    return self.denoiser.vocab_size

  @property
  def prime_code(self) -> prime.DigitCode | None:
    """MDM-Prime's digit code (V, l) when the denoiser reads l > 1 digits, else None."""
    if self.denoiser.prime_digits > 1:
      return prime.DigitCode(self.vocab_size, self.denoiser.prime_digits)
    return None

  @property
  def latent_dim(self) -> int:
    return self.encoder.latent_dim if self.encoder is not None else 0

  def init(self, key, x0) -> Params:
    """Parameters for int [B, N] inputs like ``x0``."""
    k_den, k_enc = jax.random.split(key)
    t = jnp.zeros((x0.shape[0],), jnp.float32)
    z = jnp.zeros((x0.shape[0], self.latent_dim)) if self.encoder is not None else None
    x_in = self.prime_code.to_digits(x0) if self.prime_code else x0
    params = {"denoiser": self.denoiser.init(k_den, x_in, t, z)}
    if self.encoder is not None:
      params["encoder"] = self.encoder.init(k_enc, x0, x0)
    if self.prior_encoder is not None:
      params["prior"] = self.prior_encoder.init(jax.random.fold_in(key, 2), x0)
    if self.learn_schedule:
      power_init = getattr(self.schedule, "k", 1.0)  # LinearSchedule: k = 1
      params["schedule"] = {"raw_w": genmd4.init_params(self.vocab_size, power_init).raw_w}
    return params

  def schedule_params(self, params) -> genmd4.GenMD4Params:
    """GenMD4's schedule parameters in ``params`` (``learn_schedule`` only)."""
    return genmd4.GenMD4Params(**params["schedule"])

  def schedule_metrics(self, params) -> dict[str, jax.Array]:
    """``{"genmd4/w_<v>": w_v}`` for every token value v (GenMD4); {} otherwise."""
    if not self.learn_schedule:
      return {}
    w = genmd4.exponents(self.schedule_params(params))
    return {f"genmd4/w_{v}": w[v] for v in range(self.vocab_size)}

  def denoise_fn(self, params, *, train: bool = False, rng=None):
    """``(x_t, t[, z]) -> logits``; dropout active when ``train`` (needs ``rng``)."""
    return adapters.denoise_fn(self.denoiser, params["denoiser"], train=train, rng=rng)

  def encode_fn(self, params, *, train: bool = False, rng=None):
    """``(x_0, x_t, t) -> (mean, logvar)``."""
    return adapters.encode_fn(self.encoder, params["encoder"], train=train, rng=rng)

  def prior_fn(self, params, *, train: bool = False, rng=None):
    """``x [B, L] -> (mean, logvar)`` [B, K, D] of p(z_b | x^{<b}) (``prior_encoder``
    on ``block.previous_blocks(x)``); None without a conditional prior."""
    if self.prior_encoder is None:
      return None
    encode = adapters.encode_fn(self.prior_encoder, params["prior"], train=train, rng=rng)
    return lambda x: encode(block.previous_blocks(x, self.block_size, self.vocab_size),
                            None, None)

  def loss(self, params, x0, key, *, train: bool = False, t=None, noise=None):
    """Per-sequence terms in nats, each float32 [B]; ``loss`` is what to minimise.

    The core objective of this model's kind (``_objective``: MD4, blocks,
    Prime, block Prime, GenMD4), and for VMD its latent, composed here once
    (``losses.vmd_terms``): encode q(z | x_0), draw z, the objective's terms given
    z, and ``losses.with_latent_kl`` (to p(z_b | x^{<b}) with a ``prior_encoder``,
    else N(0, I)). Blocks' ``t`` is [B, K]; with ``train`` the block mask rate is
    drawn from ``train_mask_rate`` (evaluation, ``train=False``, always uses the
    unclipped bound). x0 is checked by the core objective, the one entry point.
    """
    key, dropout_key, enc_key = jax.random.split(key, 3)
    objective = self._objective(params, x0, train, dropout_key, t, noise)
    if self.encoder is None:
      terms = objective(key, None)
      return terms if "loss" in terms else {**terms, "loss": terms["nelbo"]}
    encode = self.encode_fn(params, train=train, rng=enc_key)
    if self.encoder.sees_xt:  # MD4 only (config validation): z drawn once x_t is
      posterior = lambda xt, t: losses.DiagonalGaussian(*encode(x0, xt, t))
    else:
      posterior = losses.DiagonalGaussian(*encode(x0, x0, None))
    prior_fn = self.prior_fn(params, train=train, rng=jax.random.fold_in(enc_key, 1))
    prior = None if prior_fn is None else losses.DiagonalGaussian(*prior_fn(x0))
    return losses.vmd_terms(objective, posterior, key, self.beta, self.free_bits, prior)

  def _objective(self, params, x0, train, rng, t, noise):
    """The core objective of this model's kind as ``(key, z) -> terms``: the one
    place that picks it. GenMD4 trains on ``genmd4.rloo_loss`` (two draws of x_t
    per sequence, ``noise`` [2, B, N]) and evaluates ``genmd4.nelbo_terms``."""
    common = dict(t=t, noise=noise, antithetic=self.antithetic)
    if self.learn_schedule:
      fn = genmd4.rloo_loss if train else genmd4.nelbo_terms
      denoise = self.denoise_fn(params, train=train, rng=rng)
      return lambda key, z: fn(denoise, x0, key, self.schedule_params(params),
                               eps=self.schedule.eps, z=z, **common)
    common["num_steps"] = self.loss_steps or None  # 0: continuous time
    code = self.prime_code
    if self.block_size:
      denoise, _ = adapters.block_denoiser_fns(self.denoiser, params["denoiser"], train=train,
                                               rngs={"dropout": rng} if train else None)
      common["clip"] = self.train_mask_rate if train else (0.0, 1.0)
      if code:
        return lambda key, z: prime.block_nelbo_terms(denoise, x0, key, self.schedule, code,
                                                      self.block_size, z=z, **common)
      return lambda key, z: block.block_nelbo_terms(denoise, x0, key, self.schedule,
                                                    self.block_size, vocab_size=self.vocab_size,
                                                    z=z, **common)
    denoise = self.denoise_fn(params, train=train, rng=rng)
    if code:
      return lambda key, z: prime.nelbo_terms(denoise, x0, key, self.schedule, code, z=z,
                                              **common)
    return lambda key, z: md4.nelbo_terms(denoise, x0, key, self.schedule,
                                          vocab_size=self.vocab_size, z=z, **common)

  def num_blocks(self, seq_len: int) -> int:
    """K = N / L' (1 without blocks)."""
    return block.num_blocks(seq_len, self.block_size) if self.block_size else 1

  def sample(self, params, key, x_init, num_steps: int, order: str, *,
             prior: PriorSampler | None = None, use_cache: bool = True, **sampler_kwargs):
    """Samples (and the number of network calls) for ``x_init`` (mask id = V).

    ``num_steps`` is the NFE in total: with K blocks each block gets
    num_steps / K steps (the KV-cache prefill calls are not counted). VMD draws
    one z per sequence (per block with blocks) from ``prior`` (default N(0, I),
    or with a ``prior_encoder`` p(z_b | x^{<b}) once the blocks < b are
    generated) and keeps it for every step. ``use_cache``: blocks read the clean earlier
    blocks from a KV cache (else they are recomputed; same samples).
    """
    check_variant(self.variant, seq_len=x_init.shape[1], orders=[(order, num_steps)],
                  source="sample")
    blocks = self.num_blocks(x_init.shape[1])
    z, prior_fn = None, None
    if self.prior_encoder is not None and prior is None:
      prior_fn = self.prior_fn(params)
    elif self.encoder is not None:
      z_key, key = jax.random.split(key)
      prior = prior or standard_normal_prior(self.latent_dim)
      z = prior(z_key, x_init.shape[0] * blocks)
      if self.block_size:
        z = z.reshape(x_init.shape[0], blocks, self.latent_dim)
    run = self._sampler(params, num_steps // blocks, order, z, prior_fn, use_cache,
                        sampler_kwargs)
    if not self.prime_code:
      return run(key, x_init)
    # Prime samples digits: a masked token has every digit masked.
    check_tokens(x_init, self.vocab_size, allow_mask=True, name="x_init")
    digits, nfe = run(key, self.prime_code.tokens_to_digits(x_init))
    return self.prime_code.from_digits(digits).astype(x_init.dtype), nfe

  def _sampler(self, params, steps, order, z, prior_fn, use_cache, kwargs):
    """The core sampler of this model's kind as ``(key, x_init) -> (x, nfe)``, with
    ``steps`` per block: the one place that picks it (as ``_objective`` for the
    loss). Prime's take and return digits."""
    code, kwargs = self.prime_code, dict(kwargs, return_nfe=True)
    if self.learn_schedule:
      return lambda key, x: genmd4.sample(self.denoise_fn(params), key, x, steps,
                                          self.schedule_params(params),
                                          eps=self.schedule.eps, **kwargs)
    if self.block_size:
      denoise, prefill = adapters.block_denoiser_fns(self.denoiser, params["denoiser"])
      kwargs.update(use_cache=use_cache, z=z)
      if code:
        return lambda key, x: prime.block_sample(denoise, prefill, key, x, self.block_size,
                                                 steps, self.schedule, code, order, **kwargs)
      return lambda key, x: block.block_sample(denoise, prefill, key, x, self.block_size, steps,
                                               self.schedule, order, vocab_size=self.vocab_size,
                                               prior_fn=prior_fn, **kwargs)
    denoise = self.denoise_fn(params)
    fn = (lambda xt, t: denoise(xt, t, z)) if z is not None else denoise
    if code:
      return lambda key, x: prime.sample(fn, key, x, steps, self.schedule, code, order, **kwargs)
    return lambda key, x: sampling.sample(fn, key, x, steps, self.schedule, order=order,
                                          vocab_size=self.vocab_size, **kwargs)

  def encode_posteriors(self, params, x0):
    """q(z | x_0) for a batch with x_t all masks (what an x_0-only encoder sees),
    as ``losses.DiagonalGaussian`` [B, D] (with blocks, [B K, D]: every block's
    latent has the same prior, so the prior is fitted to all of them)."""
    xt = jnp.full_like(x0, self.vocab_size)
    t = jnp.ones((x0.shape[0],), jnp.float32)
    mean, logvar = self.encode_fn(params)(x0, xt, t)
    return losses.DiagonalGaussian(mean.reshape(-1, self.latent_dim),
                                   logvar.reshape(-1, self.latent_dim))
