"""``python -m vmd_jax.main --config=configs/NAME.py --workdir=DIR``: trains and
evaluates (``vmd-jax train``; see ``vmd_jax.trainer.cli``)."""

import sys

from vmd_jax.__main__ import trainer_cli

if __name__ == "__main__":
  trainer_cli().run_command("train", sys.argv)
