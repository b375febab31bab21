"""Flax linen models: the denoiser p(x_0 | x_t, t [, z]) and VMD's encoder q(z | x_0 [, x_t])."""

from vmd_jax.models.denoiser import LATENT_MODES, Denoiser
from vmd_jax.models.encoder import LatentEncoder
from vmd_jax.models.transformer import collect_kv

__all__ = ["Denoiser", "LatentEncoder", "LATENT_MODES", "collect_kv"]
