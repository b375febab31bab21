"""``python tests/multihost_worker.py --distributed ARGS``: ``vmd-jax train`` for
tests/test_multihost.py, with two test hooks:

- the final evaluation is replaced by a record of this process's own copy of the
  final EMA parameters, ``WORKDIR/local_ema_<process>.npz`` (one addressable
  shard of each leaf), so a test can compare the processes;
- with ``GATE=STEP:PATH`` in the environment, the batch of step STEP and later
  ones wait until the file PATH exists, so a test can act on a run that is
  certain to be mid-training.
"""

import os
import sys
import time

import jax
import numpy as np

from vmd_jax.trainer import cli, evaluate, io, train


def record_local_params(config, model, dataset, params, workdir, *args, **kwargs):
  del config, model, dataset, args, kwargs
  leaves = {str(i): np.asarray(leaf.addressable_shards[0].data)
            for i, leaf in enumerate(jax.tree.leaves(params))}
  path = io.as_path(workdir) / f"local_ema_{jax.process_index()}.npz"
  with path.open("wb") as f:
    np.savez(f, **leaves)
  return {}


def gated(batch_fn, gate_step: int, gate_path: str):
  def wait_then_batch(dataset, step, *args, **kwargs):
    while step >= gate_step and not os.path.exists(gate_path):
      time.sleep(0.05)
    return batch_fn(dataset, step, *args, **kwargs)
  return wait_then_batch


if __name__ == "__main__":
  evaluate.evaluate_run = record_local_params
  if os.environ.get("GATE"):
    step, path = os.environ["GATE"].split(":", 1)
    train.train_batch = gated(train.train_batch, int(step), path)
  cli.run_command("train", sys.argv)
