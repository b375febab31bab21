"""What one train step costs at a config's size, counted on any machine (no run).

For ``--config`` (default ``configs/text8_md4.py``, bf16, XLA's attention, batch
``--batch`` x the config's length):

- model FLOPs: ``train.model_flops_per_device`` (the lowered step, no remat),
  what the trainer's MFU divides by;
- XLA's count of the compiled step, without and with remat;
- the activations the loss keeps for the backward pass (JAX's ``saved_residuals``,
  the parameters left out), without and with remat: what decides whether a batch
  fits on one accelerator.

  PYTHONPATH=. python benchmarks/step_cost.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from jax._src.ad_checkpoint import saved_residuals

import common
from vmd_jax.trainer import build, state as state_lib, train

flags.DEFINE_string("config", "configs/text8_md4.py", "Config file.")
flags.DEFINE_integer("batch", 512, "Sequences per step.")
flags.DEFINE_integer("vocab_size", 27, "V (text8: 27).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  configs = {remat: common.load_config(FLAGS.config, (), **{
      "model.dtype": "bfloat16", "model.attention": "xla", "model.remat": remat,
      "train.batch_size": FLAGS.batch}) for remat in (False, True)}
  c = configs[False]
  seq_len, vocab = c.data.seq_len, FLAGS.vocab_size
  tx = state_lib.make_optimizer(c.train)
  x0 = jax.ShapeDtypeStruct((FLAGS.batch, seq_len), jnp.int32)
  state = jax.eval_shape(lambda k: state_lib.init_state(
      build.build_model(c, vocab, seq_len), tx, k, jnp.zeros((1, seq_len), jnp.int32)),
                         jax.random.key(0))
  print(f"model FLOPs per step: "
        f"{train.model_flops_per_device(c, vocab, seq_len, tx, state) / 1e12:.2f} TFLOP")
  for remat, cr in configs.items():
    model = build.build_model(cr, vocab, seq_len)
    step = jax.jit(train.make_train_step(model, tx, cr.seed, cr.train.ema_decay))
    flops = common.flops_of(step.lower(state, x0).compile())
    loss = lambda p, x: jnp.mean(model.loss(p, x, jax.random.key(1), train=True)["loss"])
    kept = sum(np.prod(a.shape) * a.dtype.itemsize
               for a, why in saved_residuals(loss, state.params, x0) if "argument" not in why)
    print(f"remat={remat}: compiled step {flops / 1e12:.2f} TFLOP, "
          f"kept for the backward pass {kept / 2**30:.1f} GiB", flush=True)


if __name__ == "__main__":
  app.run(main)
