"""Sweeps: a config whose ``runs`` field holds one full config per table row.

Each run trains in ``workdir/NAME`` (resuming like any run); the table of their
NELBOs and sample metrics (accuracy and KL for every ORDER:NFE setting, where
the dataset scores them) is printed and written to ``workdir/table.md``. A run
that diverges or cannot be set up is logged, marked in the table, and the sweep
goes on with the next one; it then ends with ``SweepFailed`` naming them (on
several processes the first failure ends the sweep, as a set-up error may be one
process's alone). A signal (``preemption.RunStopped``) stops the sweep at once.
"""

from __future__ import annotations

import jax
from absl import logging

from vmd_jax.trainer import guard, io, train


class SweepFailed(Exception):
  """Some runs of a sweep failed (the others trained and are in the table); exit 1."""
  exit_code = 1


def _cell(metrics: dict | None) -> str:
  if metrics is None or "accuracy" not in metrics:  # text8 scores no accuracy
    return ""
  if "kl" in metrics:
    return f"{100 * metrics['accuracy']:.1f}% ({metrics['kl']:.3f})"
  return f"{100 * metrics['accuracy']:.1f}%"


def format_table(results: dict[str, dict | str]) -> str:
  """Markdown: one row per run (a failed run's row gives its error), a column of
  the NELBO in bits per token, one column per sampling setting, cells 'acc% (KL)'."""
  settings = []
  for r in results.values():
    if isinstance(r, dict):
      settings += [s for s in r["samples"] if s not in settings]
  lines = ["| run | NELBO (bits/token) | " + " | ".join(settings) + " |",
           "|---" * (len(settings) + 2) + "|"]
  for name, r in results.items():
    if not isinstance(r, dict):
      lines.append(f"| {name} | failed: {r} |" + " |" * len(settings))
      continue
    nelbo = r.get("nelbo", {}).get("nelbo_bits_per_token")
    cells = ["" if nelbo is None else f"{nelbo:.3f}"]
    cells += [_cell(r["samples"].get(s)) for s in settings]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n\ncells: accuracy (KL(data || samples) in nats); " \
      "ORDER:NFE, '/mixture' = z from the learned prior\n"


def run_sweep(config, workdir: str) -> dict[str, dict | str]:
  """Trains and evaluates every run of ``config.runs``; {name: eval result, or
  the error of a failed run}. Raises ``SweepFailed`` after the table if any failed."""
  results = {}
  for name, run in config.runs.items():
    logging.info("=== sweep run %s", name)
    try:
      results[name] = train.train_and_evaluate(run, io.as_path(workdir) / name)
    except (guard.TrainingDiverged, train.BadSetup) as e:
      if jax.process_count() > 1:  # a set-up error may be one process's alone:
        raise                      # going on would pair collectives across runs
      logging.error("sweep run %s failed: %s", name, e)
      results[name] = str(e)
  table = format_table(results)
  io.write_text(io.as_path(workdir) / "table.md", table)
  print(table, flush=True)
  failed = [name for name, r in results.items() if not isinstance(r, dict)]
  if failed:
    raise SweepFailed(f"sweep runs {', '.join(failed)} failed (see {workdir}/table.md and "
                      "the log); the others trained")
  return results
