"""From a validated config to the dataset, the schedule and the model.

``config.model`` names the networks' fields directly: ``DENOISER_FIELDS`` and
``ENCODER_FIELDS`` map each config field to the module attribute it sets, so a
new network field is one line here and one default in ``config.base_config``.
"""

from __future__ import annotations

import jax.numpy as jnp

from vmd_jax import data
from vmd_jax.networks import Denoiser, LatentEncoder, MaskedDiffusion
from vmd_jax.networks.variant import check_variant
from vmd_jax.schedules import Schedule, get_schedule

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# config.model field -> Denoiser attribute
DENOISER_FIELDS = {
    "width": "width", "depth": "depth", "num_heads": "num_heads", "mlp_ratio": "mlp_ratio",
    "dropout": "dropout_rate", "time_conditioning": "time_conditioning",
    "cond_dim": "cond_dim", "latent_mode": "latent_mode", "latent_init": "latent_init",
    "mlp_multiple_of": "mlp_multiple_of", "mlp_type": "mlp_type", "use_bias": "use_bias",
    "depth_scaled_init": "depth_scaled_init", "embed_dim": "embed_dim",
    "time_features": "time_features", "time_hidden": "time_hidden",
    "attention": "attention", "remat": "remat",
}
# config.model field -> LatentEncoder attribute
ENCODER_FIELDS = {
    "encoder_width": "width", "encoder_depth": "depth", "encoder_heads": "num_heads",
    "latent_dim": "latent_dim", "encoder_sees_xt": "sees_xt", "encoder_pooling": "pooling",
    "dropout": "dropout_rate", "logvar_min": "logvar_min", "logvar_max": "logvar_max",
    "attention": "attention", "remat": "remat",
}


def build_dataset(config):
  """The dataset ``config.data`` names (``vmd_jax.data`` registry)."""
  return data.get_dataset(config.data, config.seed)


def build_schedule(config) -> Schedule:
  """The fixed schedule; for ``diffusion.kind = "genmd4"``, the polynomial
  schedule every learned exponent starts from (``MaskedDiffusion.learn_schedule``)."""
  f = config.diffusion
  params = {"eps": f.eps}
  if f.kind == "genmd4":
    return get_schedule("polynomial", k=f.genmd4_power_init, **params)
  if f.schedule == "polynomial":
    params["k"] = f.schedule_k
  return get_schedule(f.schedule, **params)


def build_denoiser(config, vocab_size: int, seq_len: int) -> Denoiser:
  m = config.model
  kwargs = {attr: m[field] for field, attr in DENOISER_FIELDS.items()}
  kwargs["cond_dim"] = kwargs["cond_dim"] or None
  kwargs["time_hidden"] = kwargs["time_hidden"] or None
  return Denoiser(vocab_size=vocab_size, dtype=DTYPES[m.dtype],
                  latent_dim=m.latent_dim if m.kind == "vmd" else 0,
                  learned_positions=seq_len if m.position_embedding == "learned" else 0,
                  prime_digits=config.diffusion.prime_digits,
                  absolute_positions=m.position_embedding != "none", **kwargs)


def build_encoder(config, vocab_size: int) -> LatentEncoder | None:
  m = config.model
  if m.kind != "vmd":
    return None
  kwargs = {attr: m[field] for field, attr in ENCODER_FIELDS.items()}
  return LatentEncoder(vocab_size=vocab_size, dtype=DTYPES[m.dtype],
                       block_size=config.diffusion.block_size, **kwargs)


def build_prior_encoder(config, vocab_size: int) -> LatentEncoder | None:
  """The conditional prior p(z_b | x^{<b}) (``prior.kind = "conditional"``): a
  network of the encoder's size over V + 1 tokens (the mask id V: not visible)."""
  if config.prior.kind != "conditional":
    return None
  return build_encoder(config, vocab_size + 1)


def build_model(config, vocab_size: int, seq_len: int) -> MaskedDiffusion:
  """The ``MaskedDiffusion`` of ``config`` for sequences of ``seq_len`` tokens in
  [0, vocab_size) (a dataset's ``vocab_size`` and ``seq_len``)."""
  f = config.diffusion
  model = MaskedDiffusion(
      denoiser=build_denoiser(config, vocab_size, seq_len), schedule=build_schedule(config),
      encoder=build_encoder(config, vocab_size), beta=f.beta, free_bits=f.free_bits,
      loss_steps=f.loss_steps, antithetic=f.antithetic, block_size=f.block_size,
      train_mask_rate=(f.train_mask_rate_min, f.train_mask_rate_max),
      learn_schedule=f.kind == "genmd4",
      prior_encoder=build_prior_encoder(config, vocab_size))
  check_variant(model.variant, seq_len=seq_len)  # block_size must divide the length
  return model
