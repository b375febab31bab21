"""``python -m vmd_jax.main --config=configs/NAME.py --workdir=DIR``: trains and
evaluates (``vmd-jax train``; see ``vmd_jax.trainer.cli``)."""

import sys

from vmd_jax.trainer import cli

if __name__ == "__main__":
  cli.run_command("train", sys.argv)
