"""vmd_jax: masked discrete diffusion (MD4, VMD, block diffusion) in JAX/Flax.

The pure diffusion math lives in ``schedules``, ``forward``, ``losses`` and
``sampling`` and imports no Flax and no config.
"""

__version__ = "0.1.0"
