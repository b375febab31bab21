"""``python -m vmd_jax train | evaluate | sample ...`` (see ``vmd_jax.trainer.cli``)."""

from vmd_jax.trainer import cli

cli.run()
