"""docs/compile.md's table: the shipped text8 configs, and a 1.2B-parameter one,
compiled ahead of time for TPU slices by ``vmd-jax compile`` on this machine.

  .venv/bin/python benchmarks/tpu_compile_table.py [ROW ...]   # default: every row

Each row runs ``vmd-jax compile --json=...`` in a subprocess (XLA's TPU compiler
from libtpu, no TPU), most informative rows first; the rows' JSON (or the one-line
refusal of a step that does not fit) is merged into
``benchmarks/results_tpu_compile.json`` after each row, with the commit and date,
and ``docs/compile.md`` is rewritten from it. A row already in the JSON is not run
again (delete it there to rerun).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results_tpu_compile.json")
DOC = os.path.join(ROOT, "docs", "compile.md")
VMD_JAX = os.path.join(os.path.dirname(sys.executable), "vmd-jax")

BF16 = ["--config.model.dtype=bfloat16"]
# ~1.2B parameters: md4's text8 network at 24 layers, width 2048, 16 heads; bf16
# compute and remat, the usual settings at this size.
BIG = ["--config.model.width=2048", "--config.model.depth=24", "--config.model.num_heads=16",
       "--config.model.remat=True", *BF16]
# name: (config, topology, flags); the most informative first.
ROWS = {
    "text8_vmd/v5p-64": ("text8_vmd", "v5p-64", []),
    "big_1b/v5e-16/data16": ("text8_md4", "v5e-16", BIG + ["--nosampler"]),
    "big_1b/v5e-16/fsdp16": ("text8_md4", "v5e-16",
                             BIG + ["--config.mesh.data=1", "--config.mesh.fsdp=16",
                                    "--nosampler"]),
    "text8_vmd/v5p-64/bf16": ("text8_vmd", "v5p-64", BF16),
    "text8_md4/v5p-64": ("text8_md4", "v5p-64", []),
    "text8_bd3/v5p-64": ("text8_bd3", "v5p-64", []),
    "text8_vmd/v5e-16": ("text8_vmd", "v5e-16", ["--nosampler"]),
    "text8_vmd/v4-8": ("text8_vmd", "v4-8", ["--nosampler"]),
    "text8_md4/v5e-16": ("text8_md4", "v5e-16", ["--nosampler"]),
    "text8_bd3/v5e-16": ("text8_bd3", "v5e-16", ["--nosampler"]),
    "text8_md4/v4-8": ("text8_md4", "v4-8", ["--nosampler"]),
    "text8_bd3/v4-8": ("text8_bd3", "v4-8", ["--nosampler"]),
    "text8_vmd/v5e-16/bf16": ("text8_vmd", "v5e-16", BF16 + ["--nosampler"]),
}


def command(name: str) -> list[str]:
  config, topology, flags = ROWS[name]
  return ["vmd-jax", "compile", f"--config={config}", f"--topology={topology}", *flags]


def run_row(name: str) -> dict:
  """One row: its command, rows or refusal, exit code, commit, date, wall seconds."""
  out = os.path.join(ROOT, "benchmarks", ".tpu_compile_row.json")
  if os.path.exists(out):
    os.remove(out)
  start = time.time()
  proc = subprocess.run(["nice", "-n", "10", VMD_JAX, *command(name)[1:], f"--json={out}"],
                        capture_output=True, text=True, cwd=ROOT)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT).stdout.strip()
  result = {"command": " ".join(command(name)), "exit_code": proc.returncode,
            "commit": commit, "date": datetime.date.today().isoformat(),
            "wall_seconds": round(time.time() - start),
            "device": "XLA's TPU compiler (libtpu) on a CPU host: estimates, no TPU"}
  if os.path.exists(out):
    with open(out) as f:
      result["rows"] = json.load(f)["rows"]
    os.remove(out)
  if proc.returncode:
    result["refusal"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
  return result


def _number(value, form: str, scale: float = 1.0) -> str:
  return "-" if value is None else format(value / scale, form)


def markdown_rows(results: dict) -> list[str]:
  """A table line per compiled function of every row, in ``ROWS``' order."""
  lines = ["| row | function | chips | mesh | params | dtype | args GiB | temp GiB | "
           "peak / HBM GiB | TFLOP per chip | est. s | est. MFU | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name in ROWS:
    result = results.get(name)
    if result is None:
      continue
    for r in result.get("rows", []):
      mesh = " x ".join(f"{a} {n}" for a, n in r["mesh"].items())
      fits = ("" if r["hbm_bytes"] is None or r["peak_bytes"] <= r["hbm_bytes"]
              else " **does not fit**")
      cells = [name, r["function"], str(r["chips"]), mesh, f"{r['parameters'] / 1e6:.1f}M",
               r["dtype"], _number(r["argument_bytes"], ".2f", 2**30),
               _number(r["temp_bytes"], ".2f", 2**30),
               f"{_number(r['peak_bytes'], '.2f', 2**30)} / "
               f"{_number(r['hbm_bytes'], '.0f', 2**30)}{fits}",
               _number(r["flops"], ".3g", 1e12), _number(r["estimated_seconds"], ".3g"),
               _number(r["mfu"], ".1%"), f"{r['compile_seconds']:.0f}"]
      lines.append("| " + " | ".join(cells) + " |")
    if "rows" not in result:
      lines.append(f"| {name} | refused (exit {result['exit_code']}): "
                   f"`{result.get('refusal', '')}` |" + " |" * 11)
  return lines


BEGIN, END = "<!-- table: benchmarks/tpu_compile_table.py -->", "<!-- end of table -->"


def write_doc(results: dict) -> None:
  """Rewrites the table of docs/compile.md (between ``BEGIN`` and ``END``), with
  the commits and dates of its rows and the rows not yet compiled."""
  commits = sorted({r["commit"] for r in results.values()})
  dates = sorted({r["date"] for r in results.values()})
  missing = [name for name in ROWS if name not in results]
  block = "\n".join([
      BEGIN, f"Commit {', '.join(commits)}, {', '.join(dates)}.", "",
      *markdown_rows(results), "",
      ("Not compiled yet: " + ", ".join(missing) + "." if missing
       else "Every row of the script is here."), END])
  with open(DOC) as f:
    text = f.read()
  head, rest = text.split(BEGIN, 1)
  with open(DOC, "w") as f:
    f.write(head + block + rest.split(END, 1)[1])


def main(names: list[str]) -> None:
  results = {}
  if os.path.exists(RESULTS):
    with open(RESULTS) as f:
      results = json.load(f)
  for name in names or list(ROWS):
    if name not in ROWS:
      sys.exit(f"unknown row {name!r}; rows: {list(ROWS)}")
    if name in results:
      continue
    print(f"{name}: {' '.join(command(name))}", flush=True)
    results[name] = run_row(name)
    print(f"{name}: exit {results[name]['exit_code']} after "
          f"{results[name]['wall_seconds']} s", flush=True)
    with open(RESULTS, "w") as f:
      json.dump(results, f, indent=2)
    write_doc(results)


if __name__ == "__main__":
  main(sys.argv[1:])
