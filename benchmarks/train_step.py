"""Train-step and forward-pass cost of a config's model on this machine.

For ``--config`` (default ``configs/text8_md4.py``) cut to ``--width/--depth/--num_heads``
(default md4's probe size, 4 layers, 4 heads, width 256) at batch ``--batch`` x the
config's length, measures in one process:

- ``parameters``: the denoiser's (and encoder's) parameter count;
- ``train_step``: seconds per jitted step (forward, backward, AdamW, EMA: the
  trainer's own ``make_train_step``, state donated), median of ``--repeats``;
- ``flops_per_step``: XLA's ``cost_analysis()["flops"]`` of that compiled step;
- ``forward``: one jitted ``denoise_fn`` call on an all-mask batch (what a sampler
  pays per step), seconds and its FLOPs;
- ``matmul_2048``: a 2048 x 2048 fp32 ``jnp.dot`` (2 * 2048^3 FLOPs) timed between
  the steps, the machine's practical peak at that moment; ``share_of_matmul`` is
  achieved GFLOP/s over its GFLOP/s (both medians; a ratio, so it survives load);
- ``peak_rss_mib``: the process's peak resident memory (``ru_maxrss``) after
  the train steps, before the forward pass is compiled; ``rss_after_imports_mib``
  the same right after the imports (no TensorFlow among them: the trainer
  imports ``clu.metric_writers``, and with it TensorFlow, only to run).

  PYTHONPATH=. python benchmarks/train_step.py --output=benchmarks/train_step_cpu.json
  PYTHONPATH=. python benchmarks/train_step.py --set=model.attention=einsum

``--set=FIELD=VALUE`` (repeatable) overrides any config field, parsed as a literal.
"""

from __future__ import annotations

import json
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from vmd_jax.trainer import build, state as state_lib, train

flags.DEFINE_string("config", "configs/text8_md4.py", "Config file.")
flags.DEFINE_integer("width", 256, "Model width (md4's probe: 256).")
flags.DEFINE_integer("depth", 4, "Layers (md4's probe: 4).")
flags.DEFINE_integer("num_heads", 4, "Heads (md4's probe: 4).")
flags.DEFINE_integer("batch", 16, "Sequences per step.")
flags.DEFINE_float("dropout", 0.0, "Dropout rate (md4's probe: 0).")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides, e.g. model.remat=True.")
flags.DEFINE_integer("repeats", 5, "Timed steps (and forwards, and matmuls).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS

VOCAB_SIZE = 27  # text8
RSS_AFTER_IMPORTS_MIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_config():
  return common.load_config(
      FLAGS.config, FLAGS.set, **{"model.width": FLAGS.width, "model.depth": FLAGS.depth,
                                  "model.num_heads": FLAGS.num_heads,
                                  "model.dropout": FLAGS.dropout,
                                  "train.batch_size": FLAGS.batch})


def main(argv):
  del argv
  c = load_config()
  seq_len = c.data.seq_len
  model = build.build_model(c, VOCAB_SIZE, seq_len)
  tx = state_lib.make_optimizer(c.train)
  x0 = jnp.asarray(np.random.RandomState(0).randint(0, VOCAB_SIZE, (FLAGS.batch, seq_len)),
                   jnp.int32)
  state = jax.jit(lambda k: state_lib.init_state(model, tx, k, x0))(jax.random.key(c.seed))
  n_params = int(sum(x.size for x in jax.tree.leaves(state.params)))

  start = time.perf_counter()
  step = jax.jit(train.make_train_step(model, tx, c.seed, c.train.ema_decay),
                 donate_argnums=(0,)).lower(state, x0).compile()
  compile_s = time.perf_counter() - start
  a, b = (jax.random.normal(k, (2048, 2048), jnp.float32)
          for k in jax.random.split(jax.random.key(1)))
  matmul = jax.jit(jnp.dot).lower(a, b).compile()
  box = [step(state, x0)[0]]  # warm-up

  def one_step():
    box[0], metrics = step(box[0], x0)
    return metrics

  step_s, matmul_s = [], []
  for _ in range(FLAGS.repeats):  # interleaved, so load hits both alike
    step_s.append(common.seconds(one_step))
    matmul_s.append(common.seconds(matmul, a, b))
  peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

  params = box[0].params
  x_all_mask = jnp.full((FLAGS.batch, seq_len), VOCAB_SIZE, jnp.int32)
  forward = jax.jit(lambda p, x: model.denoise_fn(p)(x, jnp.full((x.shape[0],), 0.5))).lower(
      params, x_all_mask).compile()
  jax.block_until_ready(forward(params, x_all_mask))
  forward_s = [common.seconds(forward, params, x_all_mask) for _ in range(FLAGS.repeats)]

  flops = common.flops_of(step)
  step_med, matmul_med, fwd_med = (statistics.median(x) for x in (step_s, matmul_s, forward_s))
  achieved = flops / step_med / 1e9
  peak = 2 * 2048**3 / matmul_med / 1e9
  result = {
      **common.machine(),
      "settings": {"config": FLAGS.config, "width": FLAGS.width, "depth": FLAGS.depth,
                   "num_heads": FLAGS.num_heads, "batch": FLAGS.batch, "seq_len": seq_len,
                   "dropout": FLAGS.dropout, "overrides": FLAGS.set, "repeats": FLAGS.repeats,
                   "model": c.model.to_dict()},
      "parameters": n_params,
      "train_step": {"seconds_median": step_med, "seconds": step_s, "compile_seconds": compile_s,
                     "flops_per_step": flops, "achieved_gflops": achieved},
      "matmul_2048": {"seconds_median": matmul_med, "seconds": matmul_s, "gflops": peak},
      "share_of_matmul": achieved / peak,
      "forward": {"seconds_median": fwd_med, "seconds": forward_s,
                  "flops": common.flops_of(forward),
                  "achieved_gflops": common.flops_of(forward) / fwd_med / 1e9},
      "peak_rss_mib": peak_rss_mib,
      "rss_after_imports_mib": RSS_AFTER_IMPORTS_MIB,
  }
  print(json.dumps({k: result[k] for k in ("parameters", "train_step", "share_of_matmul",
                                           "forward", "peak_rss_mib", "rss_after_imports_mib",
                                           "load_average")}))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
