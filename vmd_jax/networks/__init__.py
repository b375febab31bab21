"""Flax networks and their adapters to the pure library (needs ``vmd_jax[models]``).

- ``Denoiser``: p(x_0 | x_t, t [, z]), md4's DiT-style transformer.
- ``LatentEncoder``: VMD's q(z | x_0 [, x_t]).
- ``MaskedDiffusion``: a denoiser (and encoder) bound to a schedule and the
  losses / samplers of ``vmd_jax.losses``, ``sampling`` and ``block``.
- ``adapters``: a network and its params as the library's callables.
"""

from vmd_jax.networks import adapters
from vmd_jax.networks.denoiser import LATENT_MODES, Denoiser
from vmd_jax.networks.diffusion import MaskedDiffusion, standard_normal_prior
from vmd_jax.networks.encoder import LatentEncoder
from vmd_jax.networks.transformer import collect_kv

__all__ = ["Denoiser", "LatentEncoder", "LATENT_MODES", "MaskedDiffusion", "adapters",
           "collect_kv", "standard_normal_prior"]
