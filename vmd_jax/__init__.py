"""vmd_jax: masked discrete diffusion (MD4, VMD, block diffusion) in JAX.

The core needs only jax, chex and numpy: ``schedules``, ``forward``, ``losses``, ``md4``,
``sampling``, ``block``, ``exact``, ``prior``, ``prime`` (MDM-Prime) and ``genmd4``
are pure functions of arrays, a PRNG key and a ``denoise_fn``. Flax networks are in ``vmd_jax.networks``
(``vmd_jax[models]``); the trainer is ``vmd_jax.trainer`` (``vmd_jax[train]``),
and ``vmd_jax.load(workdir)`` returns a trained run's (model, params, config).
"""

__version__ = "0.2.0"


def load(workdir, step=None):
  """(model, EMA params, config) of a trained run; see ``vmd_jax.trainer.load``."""
  from vmd_jax.trainer.load import load as _load
  return _load(workdir, step)
