"""Sampler throughput on an untrained ``Denoiser``: calls made and seconds.

Three parts, each a jitted function that takes the parameters as an argument
(never closed over), compiled ahead of time (``jit(...).lower(...).compile()``),
then run ``--repeats`` times; the median wall time is reported.

one_block
  ``sampling.sample`` on a batch of all-mask sequences: ancestral at
  ``--ancestral_steps`` steps with idle steps skipped (each sequence advances to
  its own next reveal step: at most L calls), ancestral at ``--dense_steps``
  without skipping (md4's loop: a call at every step, the per-call baseline),
  and first hitting (L calls). ``nfe`` is the batch calls made.
blocks
  ``block.block_sample`` per block size L' with and without the KV cache, in
  two regimes: ``one_token_per_step`` (L' steps per block, NFE = L whatever L')
  and ``steps_per_block`` (``--steps_per_block`` per block, NFE = K steps).
  Prefill calls (one per finished block) are timed but not counted.
kv_prefix
  One cached call of a block of L' tokens against a prefix of P cached keys, for
  P from 0 to L, at each length in ``--kv_lengths``: what a cached call costs as
  the prefix grows (the block sampler's cache is preallocated at full length L,
  so every cached call pays the P = L price).

  python benchmarks/sampler_throughput.py --output=benchmarks/results_cpu.json

Defaults: md4's text8 model (``configs/text8_md4.py``'s network) cut to 4 layers
of width 256 (4 heads; 3,702,336 parameters, as md4's), batch
16 x 256, V = 27, a CPU-sized run. md4's full text8 size is
--width=768 --depth=12 --num_heads=12, for a GPU.
"""

from __future__ import annotations

import json
import sys
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from common import compile_and_time
from vmd_jax import block, sampling
from vmd_jax.networks import adapters
from vmd_jax.schedules import get_schedule
from vmd_jax.trainer import build, io

flags.DEFINE_list("parts", ["one_block", "blocks", "kv_prefix"], "Which parts to run.")
flags.DEFINE_integer("length", 256, "Sequence length L.")
flags.DEFINE_integer("batch", 16, "Sequences generated per call.")
flags.DEFINE_integer("ancestral_steps", 1000, "T of the skipping ancestral rows (also 100).")
flags.DEFINE_integer("dense_steps", 100, "T of the ancestral row that calls at every step.")
flags.DEFINE_list("block_sizes", ["4", "16", "256"], "Block sizes L' (each divides L).")
flags.DEFINE_integer("block_batch", 4, "Batch of the block rows.")
flags.DEFINE_list("cache_segments", ["1", "4"], "block_sample's cache_segments for the cached "
                  "rows (1: every cached call attends over all L keys).")
flags.DEFINE_integer("steps_per_block", 4, "Steps per block in the steps_per_block regime.")
flags.DEFINE_string("order", "top_prob", "Order inside a block (top_prob reveals a fixed "
                    "number of tokens per step, so every step is a network call).")
flags.DEFINE_list("kv_lengths", ["256", "2048"], "L of the kv_prefix rows.")
flags.DEFINE_integer("kv_block", 4, "L' of the kv_prefix rows.")
flags.DEFINE_string("config", "configs/text8_md4.py", "The config whose network is timed "
                    "(md4's), cut to --width/--depth/--num_heads, dropout 0.")
flags.DEFINE_integer("width", 256, "Denoiser width.")
flags.DEFINE_integer("depth", 4, "Denoiser depth.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("vocab_size", 27, "V (text8: 27).")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides, e.g. model.dtype=bfloat16.")
flags.DEFINE_integer("repeats", 1, "Timed runs after compilation.")
flags.DEFINE_integer("warmup_runs", 0, "Untimed runs before them (1 on a GPU).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def one_block(model, params, length, batch, ancestral_steps, dense_steps, repeats):
  """Rows for the one-block orders (md4's setting)."""
  schedule = get_schedule("linear")
  x_init = jnp.full((batch, length), model.vocab_size, jnp.int32)
  runs = [("ancestral", 100, True), ("ancestral", ancestral_steps, True),
          ("ancestral", dense_steps, False), ("first_hitting", length, True)]
  for order, steps, skip in runs:
    def fn(params, key, x, order=order, steps=steps, skip=skip):
      return sampling.sample(adapters.denoise_fn(model, params), key, x, steps, schedule,
                             order, vocab_size=model.vocab_size, skip_idle=skip,
                             return_nfe=True)
    compile_s, seconds, (x, nfe) = compile_and_time(
        fn, params, jax.random.key(1), x_init, repeats=repeats, warmup=FLAGS.warmup_runs)
    assert int(jnp.sum(x == model.vocab_size)) == 0
    yield {"part": "one_block", "order": order, "steps": steps, "skip_idle": skip,
           "batch": batch, "length": length, "nfe": int(nfe), "seconds": seconds,
           "compile_seconds": compile_s, "ms_per_call": 1000 * seconds / int(nfe),
           "tokens_per_sec": batch * length / seconds}


def blocks(model, params, length, block_sizes, batch, steps_per_block, order, repeats,
           cache_segments):
  """Rows per (regime, block size, cache segments; 0 = no cache)."""
  schedule = get_schedule("linear")
  x_init = jnp.full((batch, length), model.vocab_size, jnp.int32)
  for regime in ("one_token_per_step", "steps_per_block"):
    for block_size in block_sizes:
      num = length // block_size
      steps = block_size if regime == "one_token_per_step" else steps_per_block
      for segments in [0] + ([] if num == 1 else cache_segments):  # 1 block: no cache
        use_cache = segments > 0
        def fn(params, key, x, bs=block_size, s=steps, seg=segments):
          denoise, prefill = adapters.block_denoiser_fns(model, params)
          return block.block_sample(denoise, prefill, key, x, bs, s, schedule, order,
                                    vocab_size=model.vocab_size, use_cache=seg > 0,
                                    cache_segments=max(seg, 1), return_nfe=True)
        compile_s, seconds, (_, nfe) = compile_and_time(
            fn, params, jax.random.key(1), x_init, repeats=repeats, warmup=FLAGS.warmup_runs)
        yield {"part": "blocks", "regime": regime, "block_size": block_size,
               "blocks": num, "steps_per_block": steps, "nfe": int(nfe),
               "kv_cache": use_cache, "cache_segments": segments, "batch": batch,
               "seconds": seconds, "compile_seconds": compile_s,
               "tokens_per_sec": batch * length / seconds,
               "ms_per_call": 1000 * seconds / int(nfe)}


def kv_prefix(model, params, lengths, block_size, batch, repeats, calls=20):
  """Seconds per cached call of one block against P cached keys, P in 0..L."""
  for length in lengths:
    x = jnp.zeros((batch, length), jnp.int32)
    _, prefill = adapters.block_denoiser_fns(model, params)
    cache = block.init_kv_cache(prefill, x)
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
      prefix = int(fraction * length)
      def fn(params, x_block, cache, prefix=prefix):
        denoise, _ = adapters.block_denoiser_fns(model, params)
        kv = jax.tree.map(lambda c: c[:, :prefix], cache) if prefix else None
        mask = jnp.ones((block_size, prefix + block_size), bool)
        positions = (prefix + jnp.arange(block_size))[None]
        t = jnp.full(x_block.shape, 0.5)
        def body(i, acc):  # `calls` calls in one program: less dispatch noise
          return acc + denoise(x_block + i % 2, t, positions, mask, kv)[0, 0, 0]
        return jax.lax.fori_loop(0, calls, body, jnp.float32(0))
      _, seconds, _ = compile_and_time(fn, params, x[:, :block_size], cache, repeats=repeats,
                                       warmup=FLAGS.warmup_runs)
      yield {"part": "kv_prefix", "length": length, "block_size": block_size,
             "batch": batch, "prefix": prefix, "ms_per_call": 1000 * seconds / calls}


def markdown(rows: list[dict]) -> str:
  out = []
  one = [r for r in rows if r["part"] == "one_block"]
  if one:
    out += ["| order | steps | idle steps | calls | seconds | ms per call |",
            "|---|---|---|---|---|---|"]
    out += [f"| {r['order']} | {r['steps'] if r['order'] != 'first_hitting' else '-'} | "
            f"{'-' if r['order'] == 'first_hitting' else 'skipped' if r['skip_idle'] else 'called'}"
            f" | {r['nfe']} | "
            f"{r['seconds']:.1f} | {r['ms_per_call']:.0f} |" for r in one]
    out.append("")
  blk = [r for r in rows if r["part"] == "blocks"]
  if blk:
    segs = sorted({r["cache_segments"] for r in blk} - {0})
    out += ["| regime | L' | blocks | NFE | tokens/s uncached | "
            + " | ".join(f"cached, S = {s}" for s in segs) + " |",
            "|---" * (5 + len(segs)) + "|"]
    for regime in ("one_token_per_step", "steps_per_block"):
      for bs in sorted({r["block_size"] for r in blk}):
        sel = {r["cache_segments"]: r for r in blk
               if r["regime"] == regime and r["block_size"] == bs}
        unc = sel[0]
        cached = [f"{sel[s]['tokens_per_sec']:.0f} ({unc['seconds'] / sel[s]['seconds']:.1f}x)"
                  if s in sel else "n/a (one block)" for s in segs]
        out.append(f"| {regime} | {bs} | {unc['blocks']} | {unc['nfe']} | "
                   f"{unc['tokens_per_sec']:.0f} | " + " | ".join(cached) + " |")
    out.append("")
  kv = [r for r in rows if r["part"] == "kv_prefix"]
  if kv:
    out += ["| L | L' | ms per call at P = 0, L/4, L/2, 3L/4, L | mean over P / P = L |",
            "|---|---|---|---|"]
    for length in sorted({r["length"] for r in kv}):
      ms = [r["ms_per_call"] for r in kv if r["length"] == length]
      mean = (ms[0] / 2 + sum(ms[1:-1]) + ms[-1] / 2) / (len(ms) - 1)  # trapezoid over P
      out.append(f"| {length} | {kv[0]['block_size']} | "
                 f"{', '.join(f'{m:.1f}' for m in ms)} | {mean / ms[-1]:.2f} |")
  return "\n".join(out)


def main(argv):
  del argv
  block_sizes = [int(b) for b in FLAGS.block_sizes]
  for b in block_sizes:
    if b < 1 or FLAGS.length % b:
      raise app.UsageError(f"block size {b} does not divide --length={FLAGS.length}")
  c = common.load_config(FLAGS.config, FLAGS.set,
                         **{"model.width": FLAGS.width, "model.depth": FLAGS.depth,
                            "model.num_heads": FLAGS.num_heads, "model.dropout": 0.0})
  model = build.build_denoiser(c, FLAGS.vocab_size, FLAGS.length)
  params = common.init_params(model, FLAGS.length)
  settings = {k: FLAGS[k].value for k in (
      "config", "parts", "length", "batch", "ancestral_steps", "dense_steps", "block_sizes",
      "block_batch", "cache_segments", "steps_per_block", "order", "kv_lengths", "kv_block",
      "width", "depth", "num_heads", "vocab_size", "repeats", "warmup_runs", "set")}
  n_params = int(sum(x.size for x in jax.tree.leaves(params)))
  rows, failed = [], []
  parts = {
      "one_block": lambda: one_block(model, params, FLAGS.length, FLAGS.batch,
                                     FLAGS.ancestral_steps, FLAGS.dense_steps, FLAGS.repeats),
      "blocks": lambda: blocks(model, params, FLAGS.length, block_sizes, FLAGS.block_batch,
                               FLAGS.steps_per_block, FLAGS.order, FLAGS.repeats,
                               [int(s) for s in FLAGS.cache_segments]),
      "kv_prefix": lambda: kv_prefix(model, params, [int(n) for n in FLAGS.kv_lengths],
                                     FLAGS.kv_block, FLAGS.batch, FLAGS.repeats),
  }
  if set(FLAGS.parts) - set(parts):
    raise app.UsageError(f"--parts={','.join(FLAGS.parts)}: expected some of {list(parts)}")
  for name in FLAGS.parts:
    try:
      for row in parts[name]():  # written after each row: a run cut short keeps them
        rows.append(row)
        print(json.dumps(row), flush=True)
        if FLAGS.output:
          io.write_json(FLAGS.output, {**common.machine(), "settings": settings,
                                       "parameters": n_params, "rows": rows})
    except Exception:  # one failing part (a kernel this device lacks) spares the others
      traceback.print_exc()
      failed.append(name)
  print(markdown(rows))
  if failed:
    sys.exit(f"failed: {', '.join(failed)} (tracebacks above)")


if __name__ == "__main__":
  app.run(main)
