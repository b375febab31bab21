"""Entry point: ``python -m vmd_jax.main --config=configs/NAME.py --workdir=DIR``.

Overrides: ``--config.train.num_steps=100``. A config with ``runs`` (a sweep)
trains each run in ``DIR/NAME`` and prints their table. Multi-host: pass
``--distributed`` on every process (``jax.distributed.initialize`` reads the
coordinator from the environment on TPU pods and SLURM).
"""

import logging as std_logging
import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "synthetic_table.py")
config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and eval.json.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["workdir"])


class _QuietLibraries:
  """Drops the INFO lines orbax and TensorFlow write for every checkpoint."""

  def filter(self, record):
    return record.levelno > std_logging.INFO or not any(
        s in record.pathname for s in ("/orbax/", "/tensorflow/", "/tensorstore/"))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize()
  from vmd_jax import config as config_lib, sweep, train
  config = config_lib.validate(FLAGS.config)
  logging.info("JAX %s: %d processes, %d devices (%s)", jax.__version__, jax.process_count(),
               jax.device_count(), jax.devices()[0].platform)
  if "runs" in config:
    sweep.run_sweep(config, FLAGS.workdir)
  else:
    train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
