"""Block-sampler throughput: generated tokens per second, with and without the KV cache.

For each block size L' (dividing the length L) the whole generation of a batch is
one jitted ``block.block_sample`` call (``lax.scan`` over the K = L / L' blocks,
the core sampler inside each block); it is compiled once, run ``--repeats`` times,
and the median wall time is reported. Two NFE regimes:

- ``one_token_per_step``: NFE = L in total (L / K steps per block), the same work
  for every block size without a cache; what the cache saves grows with K.
- ``steps_per_block``: a fixed number of steps per block (``--steps_per_block``),
  so NFE = K * steps: the cost of generating in more, smaller blocks.

The cache is preallocated at full length L and masked by length (static shapes
under ``lax.scan``), so a cached call costs O(L' * L) attention whatever the
prefix; the saving over the uncached call (O(L^2) attention and L tokens through
the MLPs) comes from running L' tokens instead of L. Prefill calls (one per
finished block) are timed but not counted in the NFE.

  python benchmarks/sampler_throughput.py --output=benchmarks/results_cpu.json

The model is an untrained ``Denoiser`` (weights do not change the cost); its size
is set by flags (default: width 128, depth 2, 4 heads, a CPU-sized model; md4's
text8 size is --width=768 --depth=12 --num_heads=12, for a GPU).
"""

from __future__ import annotations

import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from vmd_jax import block
from vmd_jax.models import Denoiser
from vmd_jax.schedules import get_schedule

flags.DEFINE_integer("length", 256, "Sequence length L.")
flags.DEFINE_list("block_sizes", ["4", "8", "16", "256"], "Block sizes L' (each divides L).")
flags.DEFINE_integer("batch", 4, "Sequences generated per call.")
flags.DEFINE_integer("steps_per_block", 4, "Steps per block in the steps_per_block regime.")
flags.DEFINE_string("order", "top_prob", "Sampling order inside a block (top_prob reveals a "
                    "fixed number of tokens per step, so every step is a network call).")
flags.DEFINE_integer("width", 128, "Denoiser width.")
flags.DEFINE_integer("depth", 2, "Denoiser depth.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("vocab_size", 27, "V (text8: 27).")
flags.DEFINE_integer("repeats", 2, "Timed runs after the compiling one.")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def time_call(fn, *args, repeats: int):
  """(compile+first-run seconds, median seconds of ``repeats`` further runs)."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def benchmark(length: int, block_sizes, batch: int, steps_per_block: int, order: str,
              model: Denoiser, repeats: int) -> list[dict]:
  """One row per (regime, block size, cache)."""
  params = model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32), jnp.zeros((1,)))
  denoise, prefill = block.denoiser_fns(model, params)
  schedule = get_schedule("linear")
  x_init = jnp.full((batch, length), model.vocab_size, jnp.int32)
  rows = []
  for regime in ("one_token_per_step", "steps_per_block"):
    for block_size in block_sizes:
      blocks = length // block_size
      steps = block_size if regime == "one_token_per_step" else steps_per_block
      for use_cache in (True, False):
        if blocks == 1 and use_cache:
          continue  # one block: nothing to cache
        fn = jax.jit(lambda key, x, bs=block_size, s=steps, c=use_cache: block.block_sample(
            denoise, prefill, key, x, bs, s, schedule, order, vocab_size=model.vocab_size,
            use_cache=c, return_nfe=True))
        first, seconds = time_call(fn, jax.random.key(1), x_init, repeats=repeats)
        _, nfe = fn(jax.random.key(1), x_init)
        rows.append({"regime": regime, "block_size": block_size, "blocks": blocks,
                     "steps_per_block": steps, "nfe": int(nfe), "kv_cache": use_cache,
                     "seconds": seconds, "compile_and_first_seconds": first,
                     "tokens_per_sec": batch * length / seconds,
                     "ms_per_call": 1000 * seconds / int(nfe)})
        print(json.dumps(rows[-1]), flush=True)
  return rows


def markdown(rows: list[dict]) -> str:
  lines = ["| regime | L' | blocks | NFE | tokens/s cached | tokens/s uncached | speed-up |",
           "|---|---|---|---|---|---|---|"]
  for regime in ("one_token_per_step", "steps_per_block"):
    for bs in sorted({r["block_size"] for r in rows}):
      sel = {r["kv_cache"]: r for r in rows if r["regime"] == regime and r["block_size"] == bs}
      unc = sel.get(False)
      cac = sel.get(True)
      if unc is None:
        continue
      cached = f"{cac['tokens_per_sec']:.0f}" if cac else "n/a (one block)"
      speedup = f"{unc['seconds'] / cac['seconds']:.1f}x" if cac else ""
      lines.append(f"| {regime} | {bs} | {unc['blocks']} | {unc['nfe']} | {cached} | "
                   f"{unc['tokens_per_sec']:.0f} | {speedup} |")
  return "\n".join(lines)


def main(argv):
  del argv
  block_sizes = [int(b) for b in FLAGS.block_sizes]
  for b in block_sizes:
    if b < 1 or FLAGS.length % b:
      raise app.UsageError(f"block size {b} does not divide --length={FLAGS.length}")
  model = Denoiser(vocab_size=FLAGS.vocab_size, width=FLAGS.width, depth=FLAGS.depth,
                   num_heads=FLAGS.num_heads)
  rows = benchmark(FLAGS.length, block_sizes, FLAGS.batch, FLAGS.steps_per_block, FLAGS.order,
                   model, FLAGS.repeats)
  device = jax.devices()[0]
  result = {
      "device": f"{device.platform}: {device.device_kind}",
      "cpu": platform.processor() or platform.machine(),
      "jax": jax.__version__,
      "settings": {"length": FLAGS.length, "batch": FLAGS.batch, "order": FLAGS.order,
                   "width": FLAGS.width, "depth": FLAGS.depth, "num_heads": FLAGS.num_heads,
                   "vocab_size": FLAGS.vocab_size, "repeats": FLAGS.repeats,
                   "parameters": int(sum(x.size for x in jax.tree.leaves(
                       model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                  jnp.zeros((1,))))))},
      "rows": rows,
  }
  print(markdown(rows))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=2)


if __name__ == "__main__":
  app.run(main)
