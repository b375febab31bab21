"""Plots the exponents a GenMD4 text8 run learned, one bar per character.

GenMD4 keeps character v with probability alpha_v(t) = 1 - t^{w_v} (up to md4's
eps) at time t, so in generation (t from 1 to 0) a position holding v is revealed
by time t with probability 1 - t^{w_v}: half of them by t = 0.5^{1 / w_v}. A larger
w_v means revealed earlier. Reads ``schedule`` from the run's eval.json (the EMA
exponents) and writes a PNG.

  python docs/plot_genmd4_exponents.py --workdir=runs/text8_genmd4 \
      --output=docs/genmd4_exponents.png
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ALPHABET = "abcdefghijklmnopqrstuvwxyz "  # text8's tokens 0..26 (vmd_jax.data.text_normalize)


def read_exponents(workdir: str) -> np.ndarray:
  """w_v, float [V], from ``workdir/eval.json``'s ``schedule`` (``genmd4/w_<v>``)."""
  with open(os.path.join(workdir, "eval.json")) as f:
    schedule = json.load(f).get("schedule")
  if not schedule:
    raise ValueError(f"{workdir}/eval.json has no 'schedule': not a GenMD4 run")
  return np.array([schedule[f"genmd4/w_{v}"] for v in range(len(schedule))])


def plot(w: np.ndarray, path: str, title: str) -> None:
  if len(w) != len(ALPHABET):
    raise ValueError(f"expected {len(ALPHABET)} text8 exponents, got {len(w)}")
  order = np.argsort(-w)
  labels = ["space" if ALPHABET[v] == " " else ALPHABET[v] for v in order]
  fig = Figure(figsize=(10, 4.2), dpi=120)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(w))
  # Bars from the initial exponent 1 (the linear schedule) to the learned one.
  ax.bar(x, w[order] - 1.0, bottom=1.0, color=np.where(w[order] >= 1.0, "tab:blue", "tab:orange"))
  ax.axhline(1.0, color="gray", lw=1, ls="--", label="initial $w_v$ = 1 (linear schedule)")
  ax.set_xticks(x, labels)
  ax.set_ylabel("learned exponent $w_v$")
  ax.set_xlabel("character, by $w_v$ (left: revealed earliest in generation; half revealed "
                "by $t = 0.5^{1/w_v}$)")
  spread = max(np.max(np.abs(w - 1.0)), 1e-3)
  ax.set_ylim(1.0 - 1.3 * spread, 1.0 + 1.3 * spread)
  ax.legend(loc="upper right", fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a GenMD4 text8 run")
  parser.add_argument("--output", required=True, help="the PNG to write")
  parser.add_argument("--title", default="GenMD4 exponents learned per character")
  args = parser.parse_args()
  w = read_exponents(args.workdir)
  plot(w, args.output, args.title)
  for v in np.argsort(-w):
    print(f"{ALPHABET[v]!r}: w = {w[v]:.3f}")


if __name__ == "__main__":
  main()
