"""The quality-per-second frontier of trained text runs, scored by an AR judge.

For every run and sampling setting: ``num`` samples drawn in batches of
``batch``, their wall seconds per sample (the sampler compiled first, then
timed), the network calls, and the judge's score of them (``vmd_jax.trainer.judge``:
bits per character under the judge, unigram entropy, share of repeated 4-grams),
beside the same statistics of real evaluation windows. Writes JSON and, with
``--plot``, a PNG of judge bits per character against seconds per sample (one
line per run and prior) and against network calls.

  python benchmarks/frontier.py --judge=runs/text8_cpu/judge/seed0 \
      --run=bd3=runs/text8_cpu/bd3/seed0 --run=vmd=runs/text8_cpu/vmd/seed0 \
      --output=benchmarks/results_frontier_cpu.json --plot=docs/frontier_cpu.png

Settings (``--settings``, default per run kind): block runs take
``calls_per_block`` (1, 2, 4: NFE = calls x K), others ``ORDER:NFE`` pairs
(ancestral and first_hitting at 16 ... 1000 steps, capped by ``--max_nfe``).
VMD runs are sampled with their own prior (N(0, I), or the conditional prior
they trained) and, with ``--mixture``, with the fitted mixture prior as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax.trainer import build, evaluate, judge as judge_lib, sharding
from vmd_jax.trainer.load import open_run, restore_ema

ORDERS = ("ancestral", "first_hitting")
STEPS = (16, 64, 256, 1000)
CALLS_PER_BLOCK = (1, 2, 4)


def default_settings(model, seq_len: int, max_nfe: int) -> list[tuple[str, int]]:
  """(order, NFE) pairs: 1, 2 and 4 ancestral calls per block for block runs
  (one call per block reveals the whole block: VMD's claim), else ancestral and
  first-hitting at each of ``STEPS`` up to ``max_nfe`` (GenMD4: ancestral only)."""
  blocks = model.num_blocks(seq_len)
  if model.block_size:
    return [("ancestral", c * blocks) for c in CALLS_PER_BLOCK]
  orders = ("ancestral",) if model.learn_schedule else ORDERS
  return [(o, s) for o in orders for s in STEPS if s <= max_nfe]


def priors(run, params, workdir, step, mixture: bool) -> dict:
  """{suffix: prior sampler or None (the run's own)} for one run."""
  out = {"": None}
  if mixture and run.model.encoder is not None and not run.model.prior_encoder:
    out["/mixture"] = evaluate.fit_prior(run.model, params, None, run.config, workdir,
                                         save=False, step=step).sample
  return out


def time_setting(run, params, prior, order: str, nfe: int, x_init, num: int, seed: int):
  """(samples int [num, L], seconds per sample, network calls) of one setting:
  the run's own sampler (``evaluate.jit_sampler``: its ``eval`` grid, temperature,
  top-p) compiled once (untimed), then ``num`` rows timed."""
  draw = evaluate.jit_sampler(run.model, run.config, sharding.data_parallel_mesh(), prior)
  jax.block_until_ready(draw(params, jax.random.key(seed + 10**6), x_init, nfe, order))
  batch = x_init.shape[0]
  rows, calls, start = [], 0, time.perf_counter()
  for i in range(-(-num // batch)):
    samples, nfe_used = draw(params, jax.random.key(seed + i), x_init, nfe, order)
    rows.append(np.asarray(samples))
    calls = int(nfe_used)
  seconds = (time.perf_counter() - start) / (len(rows) * batch)
  return np.concatenate(rows)[:num], seconds, calls


def frontier(args) -> dict:
  runs = dict(item.split("=", 1) for item in args.run)
  first = open_run(next(iter(runs.values())))
  judge = judge_lib.load_judge(args.judge, first.config, first.vocab_size, first.seq_len)
  dataset = build.build_dataset(first.config)
  reference = judge.score(judge_lib.reference_windows(dataset))
  result = {"judge": {"workdir": args.judge, "step": judge.step},
            "reference": reference, "runs": {}}
  print(f"real windows: {json.dumps(reference)}", flush=True)
  for name, workdir in runs.items():
    run = open_run(workdir)
    if (run.vocab_size, run.seq_len) != (first.vocab_size, first.seq_len):
      raise SystemExit(f"frontier.py: --run={name}={workdir} has (V, L) = "
                       f"{(run.vocab_size, run.seq_len)}, the first run "
                       f"{(first.vocab_size, first.seq_len)}")
    params, step = restore_ema(workdir, run)
    x_init = jnp.full((args.batch, run.seq_len), run.vocab_size, jnp.int32)
    settings = ([(o, int(n)) for o, n in (s.split(":") for s in args.settings.split(","))]
                if args.settings else default_settings(run.model, run.seq_len, args.max_nfe))
    rows = {}
    for suffix, prior in priors(run, params, workdir, step, args.mixture).items():
      for order, nfe in settings:
        samples, seconds, calls = time_setting(run, params, prior, order, nfe, x_init,
                                               args.num, args.seed)
        rows[f"{order}:{nfe}{suffix}"] = {"nfe": calls, "seconds_per_sample": seconds,
                                          **judge.score(samples)}
        print(f"{name} {order}:{nfe}{suffix}: {json.dumps(rows[f'{order}:{nfe}{suffix}'])}",
              flush=True)
    result["runs"][name] = {"workdir": workdir, "step": step, "model": run.config.model.kind,
                            "block_size": run.config.diffusion.block_size,
                            "prior": run.config.prior.kind, "grid": run.config.eval.grid,
                            "settings": rows}
  return result


def plot(result: dict, path: str):
  """Judge bits per character against seconds per sample and against network
  calls, one line per group of seeds (and prior; ``groups``: the mean, bars from
  the lowest to the highest seed), the real text's value dashed."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
  for group, settings in groups(result).items():
    lines = {}
    for setting, row in settings.items():
      suffix = setting.partition("/")[2]
      order = setting.split(":")[0]
      label = f"{group} {order}" + (f" /{suffix}" if suffix else "") + f" (n={row['n']})"
      lines.setdefault(label, []).append(row)
    for label, rows in lines.items():
      rows = sorted(rows, key=lambda r: r["nfe"])
      y = np.array([r["judge_bits_per_char"] for r in rows])
      spread = np.array([[m - r["min"], r["max"] - m] for m, r in zip(y, rows)]).T
      for ax, x in zip(axes, ([r["seconds_per_sample"] for r in rows],
                              [r["nfe"] for r in rows])):
        ax.errorbar(x, y, yerr=spread, fmt="o-", capsize=2, label=label)
  for ax, xlabel in zip(axes, ("wall seconds per sample", "network calls per sample")):
    ax.axhline(result["reference"]["judge_bits_per_char"], color="k", ls="--", lw=1,
               label="real text")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("judge bits per character (lower is better)")
    ax.grid(alpha=0.3)
  axes[1].legend(fontsize=7)
  fig.suptitle(result.get("title", "quality against cost"))
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def groups(result: dict) -> dict:
  """{group: {setting: {"judge_bits_per_char" (mean over seeds), "sd", "min",
  "max", "n", "nfe", "seconds_per_sample" (means)}}}: the runs named
  ``GROUP_s<seed>`` (``--run=bd3_s0=...``) pooled, any other name a group of its own."""
  pooled = {}
  for name, run in result["runs"].items():
    group = re.sub(r"_s\d+$", "", name)
    for setting, row in run["settings"].items():
      pooled.setdefault(group, {}).setdefault(setting, []).append(row)
  out = {}
  for group, settings in pooled.items():
    for setting, rows in settings.items():
      judged = np.array([r["judge_bits_per_char"] for r in rows])
      out.setdefault(group, {})[setting] = {
          "judge_bits_per_char": float(judged.mean()),
          "sd": float(judged.std(ddof=1)) if len(rows) > 1 else 0.0,
          "min": float(judged.min()), "max": float(judged.max()), "n": len(rows),
          "nfe": float(np.mean([r["nfe"] for r in rows])),
          "seconds_per_sample": float(np.mean([r["seconds_per_sample"] for r in rows]))}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--judge", help="an AR judge's workdir (configs/text8_judge.py)")
  p.add_argument("--run", action="append", help="NAME=WORKDIR, repeated (NAME_s<seed>: "
                 "pooled over seeds in 'groups' and the plot)")
  p.add_argument("--settings", default="", help="ORDER:NFE,... for every run (default: "
                 "per run kind)")
  p.add_argument("--num", type=int, default=64, help="samples per setting")
  p.add_argument("--batch", type=int, default=32, help="samples per sampler call")
  p.add_argument("--max_nfe", type=int, default=1000)
  p.add_argument("--mixture", action="store_true", help="VMD runs also with the mixture prior")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--output", default="")
  p.add_argument("--plot", default="")
  p.add_argument("--title", default="")
  p.add_argument("--replot", default="", help="a JSON this script wrote: add its 'groups' "
                 "and redraw --plot from it, sampling nothing")
  args = p.parse_args(argv)
  if args.replot:
    with open(args.replot) as f:
      result = json.load(f)
    result["groups"] = groups(result)
    with open(args.replot, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
    if args.plot:
      plot(result, args.plot)
    return
  if not args.judge or not args.run:
    p.error("--judge and --run are required (or --replot=JSON)")
  if args.num < 1 or args.batch < 1:
    p.error(f"--num and --batch must be >= 1, got {args.num} and {args.batch}")
  result = frontier(args)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
  result.update(command=" ".join([os.path.basename(sys.executable)] + sys.argv),
                commit=commit, date=time.strftime("%Y-%m-%d"),
                machine=f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores",
                device=str(jax.devices()[0].device_kind), title=args.title or
                "quality against cost (judge bits per character)")
  result["groups"] = groups(result)
  if args.output:
    with open(args.output, "w") as f:
      json.dump(result, f, indent=2)
      f.write("\n")
  if args.plot:
    plot(result, args.plot)


if __name__ == "__main__":
  main()
