"""Training and sampling throughput and MFU at md4's text8 size, on one accelerator.

The rows of ``benchmarks/results_gpu.json`` (issue #10). For ``--config`` (default
``configs/text8_md4.py`` at its own size: 12 layers, 12 heads, width 768,
88,734,272 parameters, batch 512 x 256) computing in ``--dtype`` (bfloat16):

train
  For each of ``--variants`` (an attention implementation, then options:
  ``+remat`` recomputes each block in the backward pass, ``+batch=N`` sets the
  batch), what ``vmd_jax.main`` runs: the trainer's sharded state
  (``train.init_sharded_state``), its compiled, guarded, donated step
  (``train.compile_step``) and its batches (``train.train_batch``: random windows
  of text in text8's alphabet, here Python's own documentation, since text8 needs
  a download). ``--warmup`` steps, then ``--steps`` steps timed from the first
  dispatch to the last state ready. Reported: steps/s, tokens/s, the compiled
  step's FLOPs (XLA's count) and

      MFU = model FLOPs per step x steps/s / peak FLOP/s per device,

  the peak from ``vmd_jax.trainer.mfu`` (H100 SXM / H200: 989e12 dense bf16) or
  ``--peak``, the model FLOPs the trainer logs (``train.model_flops_per_device``:
  the step with XLA's attention and no remat, so neither cuDNN's uncounted kernel
  nor recomputation changes them).
sample
  ``sampling.sample`` on ``--sample_batch`` all-mask sequences with random weights:
  ancestral calling the network at every one of ``--sample_steps`` steps (md4's
  loop) and first hitting (L calls, one token each); one untimed run, then two
  timed. Reported: tokens/s, ms per call and MFU = forward FLOPs x calls /
  seconds / peak, the forward FLOPs counted as the train step's are (XLA's
  attention, lowered alone at the same batch: XLA counts a loop's body once).

  python benchmarks/accelerator.py --output=benchmarks/results_gpu.json

On a CPU (no known peak) it reports FLOP/s without MFU; ``--peak`` sets one.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import common
from vmd_jax import sampling
from vmd_jax.data import text_normalize, text_sources
from vmd_jax.data.text8 import Text8Dataset
from vmd_jax.networks import adapters
from vmd_jax.schedules import get_schedule
from vmd_jax.trainer import build, io, mfu, sharding, state as state_lib, train

flags.DEFINE_string("config", "configs/text8_md4.py", "Config file (its size, batch, length).")
flags.DEFINE_multi_string("set", [], "FIELD=VALUE config overrides (--dtype and a variant's "
                          "own options win), e.g. model.dropout=0.0.")
flags.DEFINE_string("dtype", "bfloat16", "model.dtype: compute dtype.")
flags.DEFINE_list("parts", ["train", "sample"], "Which parts to run.")
flags.DEFINE_list("variants", ["cudnn+batch=256", "cudnn+remat", "xla+batch=256"],
                  "Train variants: model.attention, then '+remat' (model.remat=True) "
                  "and '+batch=N' (train.batch_size) if wanted. md4's batch of 512 "
                  "needs remat on one 80 GB GPU.")
flags.DEFINE_integer("steps", 200, "Timed train steps per variant.")
flags.DEFINE_integer("warmup", 5, "Train steps run before timing.")
flags.DEFINE_integer("sample_batch", 512, "Sequences per sampler call.")
flags.DEFINE_integer("sample_steps", 256, "Steps of the ancestral row (a call at each).")
flags.DEFINE_string("sample_attention", "cudnn", "model.attention of the sampler rows.")
flags.DEFINE_float("peak", 0.0, "Peak FLOP/s per device (0: vmd_jax.trainer.mfu's table).")
flags.DEFINE_string("output", None, "Write the results as JSON here.")
FLAGS = flags.FLAGS


def variant_config(variant: str):
  """The config of a ``--variants`` entry: ATTENTION[+remat][+batch=N]."""
  attention, *options = variant.split("+")
  fields = {"model.dtype": FLAGS.dtype, "model.attention": attention, "model.remat": False}
  for option in options:
    name, _, value = option.partition("=")
    if option == "remat":
      fields["model.remat"] = True
    elif name == "batch" and value.isdigit():
      fields["train.batch_size"] = int(value)
    else:
      raise app.UsageError(f"unknown option {option!r} in variant {variant!r}; "
                           "expected remat or batch=N")
  # After --set: the variant's own fields win.
  return common.load_config(FLAGS.config, [*FLAGS.set, *(f"{k}={v!r}" for k, v in fields.items())])


@functools.cache  # one per (seq_len, seed), shared by the variants
def text_dataset(seq_len: int, seed: int) -> Text8Dataset:
  """Python's documentation in text8's alphabet (the offline text8 stand-in)."""
  with tempfile.TemporaryDirectory() as tmp:
    text = text_sources.read_local_text(
        text_sources.write_python_docs_text(os.path.join(tmp, "docs.txt")))
  return Text8Dataset.from_tokens(text_normalize.encode(text), seq_len, seed)


def train_row(variant: str, peak: float | None) -> dict:
  c = variant_config(variant)
  tc, seq_len = c.train, c.data.seq_len
  dataset = text_dataset(seq_len, c.seed)
  mesh = sharding.make_mesh(c.mesh)
  model = build.build_model(c, dataset.vocab_size, seq_len)
  tx = state_lib.make_optimizer(tc)
  state, shardings = train.init_sharded_state(model, tx, c.seed, seq_len, mesh,
                                              c.mesh.fsdp_min_size)
  model_flops = train.model_flops_per_device(c, dataset.vocab_size, seq_len, tx, state)
  start = time.perf_counter()
  step_fn, flops = train.compile_step(model, tx, c, state, shardings, mesh, seq_len)
  compile_seconds = time.perf_counter() - start
  feed = lambda step: train.train_batch(dataset, step, tc.batch_size,
                                        sharding.batch_sharding(mesh))
  ok = jax.device_put(np.bool_(True), state.step.sharding)
  losses = []
  for step in range(FLAGS.warmup):
    state, metrics, ok = step_fn(state, feed(step), ok)
    losses.append(float(metrics["loss"]))
  jax.block_until_ready(state)
  start = time.perf_counter()
  for step in range(FLAGS.warmup, FLAGS.warmup + FLAGS.steps):
    state, metrics, ok = step_fn(state, feed(step), ok)
  jax.block_until_ready(state)
  elapsed = time.perf_counter() - start
  if not bool(ok):
    raise RuntimeError(f"{variant}: a non-finite loss or gradient norm while timing")
  steps_per_sec = FLAGS.steps / elapsed
  row = {"part": "train", "variant": variant, "dtype": FLAGS.dtype, "remat": c.model.remat,
         "parameters": int(sum(x.size for x in jax.tree.leaves(state.params))),
         "batch": tc.batch_size, "seq_len": seq_len, "steps": FLAGS.steps,
         "seconds": elapsed, "compile_seconds": compile_seconds,
         "steps_per_sec": steps_per_sec,
         "tokens_per_sec": steps_per_sec * tc.batch_size * seq_len,
         "xla_flops_per_step": flops, "model_flops_per_step": model_flops,
         "loss_first": losses[0] if losses else None, "loss_last": float(metrics["loss"]),
         **memory()}
  row.update(rate(model_flops, steps_per_sec, peak))
  return row


def sample_rows(peak: float | None):
  """The sample rows, each yielded as soon as it is measured."""
  c = variant_config(FLAGS.sample_attention)
  seq_len, batch = c.data.seq_len, FLAGS.sample_batch
  model = build.build_denoiser(c, text_normalize.VOCAB_SIZE, seq_len)
  params = common.init_params(model, seq_len)
  x_init = jnp.full((batch, seq_len), model.vocab_size, jnp.int32)
  c_count = c.copy_and_resolve_references()
  c_count.model.attention = "xla"  # as the train step's model FLOPs are counted
  model_count = build.build_denoiser(c_count, text_normalize.VOCAB_SIZE, seq_len)
  forward = lambda p, x: adapters.denoise_fn(model_count, p)(x, jnp.full((batch,), 0.5))
  forward_flops = mfu.compiled_flops(jax.jit(forward).lower(params, x_init))
  for order, steps, skip in [("ancestral", FLAGS.sample_steps, False),
                             ("first_hitting", seq_len, True)]:
    def fn(params, key, x, order=order, steps=steps, skip=skip):
      return sampling.sample(adapters.denoise_fn(model, params), key, x, steps,
                             get_schedule(c.diffusion.schedule), order,
                             vocab_size=model.vocab_size, skip_idle=skip, return_nfe=True)
    compile_s, seconds, (x, nfe) = common.compile_and_time(
        fn, params, jax.random.key(1), x_init, repeats=2, warmup=1)
    if int(jnp.sum(x == model.vocab_size)):
      raise RuntimeError(f"{order}: masks left after sampling")
    calls_per_sec = int(nfe) / seconds
    row = {"part": "sample", "order": order, "steps": steps, "attention": c.model.attention,
           "dtype": FLAGS.dtype, "batch": batch, "seq_len": seq_len, "nfe": int(nfe),
           "seconds": seconds, "compile_seconds": compile_s,
           "ms_per_call": 1000 / calls_per_sec, "tokens_per_sec": batch * seq_len / seconds,
           "forward_flops": forward_flops, **memory()}
    row.update(rate(forward_flops, calls_per_sec, peak))
    yield row


def rate(flops: float | None, per_sec: float, peak: float | None) -> dict:
  """Achieved FLOP/s per device and, with a peak, the MFU."""
  out = mfu.utilisation(flops, per_sec, peak)
  return {k: v for k, v in out.items() if k != "flops_per_step"}


def memory() -> dict:
  """The device's peak bytes in use so far (where the backend reports it)."""
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return {} if peak is None else {"peak_gib_in_use_so_far": peak / 2**30}


def main(argv):
  del argv
  peak = mfu.peak_flops_per_device(jax.devices()[0].device_kind, FLAGS.peak)
  settings = {k: FLAGS[k].value for k in (
      "config", "set", "dtype", "parts", "variants", "steps", "warmup", "sample_batch",
      "sample_steps", "sample_attention")}
  rows = []

  def add(row):  # written after each row: a run cut short keeps what it measured
    rows.append(row)
    print(json.dumps(row), flush=True)
    if FLAGS.output:
      io.write_json(FLAGS.output, {**common.machine(), "peak_flops_per_device": peak,
                                   "settings": settings, "rows": rows})

  if set(FLAGS.parts) - {"train", "sample"}:
    raise app.UsageError(f"--parts={','.join(FLAGS.parts)}: expected train and/or sample")
  for variant in FLAGS.variants if "train" in FLAGS.parts else []:
    variant_config(variant)  # a bad variant fails now, not after minutes of others
  jobs = [(f"train {v}", lambda v=v: [train_row(v, peak)])
          for v in FLAGS.variants if "train" in FLAGS.parts]
  jobs += [("sample", lambda: sample_rows(peak))] if "sample" in FLAGS.parts else []
  failed = []
  for name, job in jobs:  # one failing row (a kernel this device lacks) spares the others
    try:
      for row in job():
        add(row)
    except Exception as e:  # reported, then the run exits 1
      traceback.print_exc()
      failed.append(name)
      add({"part": name.split()[0], "job": name, "error": f"{type(e).__name__}: {e}"})
  if failed:
    sys.exit(f"failed: {', '.join(failed)} (tracebacks above)")


if __name__ == "__main__":
  app.run(main)
