"""``python -m vmd_jax train | evaluate | sample | compile ...``, and the ``vmd-jax``
console script (``vmd_jax.trainer.cli``; ``vmd-jax --help`` lists the commands)."""

import sys


def trainer_cli():
  """``vmd_jax.trainer.cli``, or one line naming the extra a core-only install
  lacks (exit 2) instead of an import traceback."""
  try:
    from vmd_jax.trainer import cli
  except ModuleNotFoundError as e:
    sys.stderr.write(f"vmd-jax: the command line needs vmd_jax[train] ({e.name} is not "
                     "installed): pip install 'vmd_jax[train]'\n")
    sys.exit(2)
  return cli


def main(argv: list[str] | None = None):
  """The ``vmd-jax`` console script."""
  trainer_cli().run(argv)


if __name__ == "__main__":
  main()
