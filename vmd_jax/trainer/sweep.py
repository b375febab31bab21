"""Sweeps: a config whose ``runs`` field holds one full config per table row.

Each run trains in ``workdir/NAME`` (resuming like any run); the table of their
sample metrics (accuracy and KL for every ORDER:NFE setting) is printed and
written to ``workdir/table.md``.
"""

from __future__ import annotations

from absl import logging

from vmd_jax.trainer import io, train


def format_table(results: dict[str, dict]) -> str:
  """Markdown: one row per run, one column per sampling setting, cells 'acc% (KL)'."""
  settings = []
  for r in results.values():
    settings += [s for s in r["samples"] if s not in settings]
  lines = ["| run | " + " | ".join(settings) + " |", "|---" * (len(settings) + 1) + "|"]
  for name, r in results.items():
    cells = []
    for s in settings:
      m = r["samples"].get(s)
      cells.append("" if m is None else f"{100 * m['accuracy']:.1f}% ({m['kl']:.3f})"
                   if "kl" in m else f"{100 * m['accuracy']:.1f}%")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\ncells: accuracy (KL(data || samples) in nats); " \
      "ORDER:NFE, '/mixture' = z from the learned prior\n"


def run_sweep(config, workdir: str) -> dict[str, dict]:
  results = {}
  for name, run in config.runs.items():
    logging.info("=== sweep run %s", name)
    results[name] = train.train_and_evaluate(run, io.as_path(workdir) / name)
  table = format_table(results)
  io.write_text(io.as_path(workdir) / "table.md", table)
  print(table, flush=True)
  return results
