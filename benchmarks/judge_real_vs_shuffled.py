"""An AR judge (``configs/text8_judge.py``) on real held-out text and on the same
text shuffled: is its score a usable judge of samples?

Scores every whole window of the judge's own test split (its ``eval_batches``,
windows of its ``seq_len``) with the exact autoregressive log-likelihood
(``vmd_jax.judge.autoregressive_log_probs``), and the same windows with their
characters permuted (a fixed seed per window), and reports both in bits per
character beside the run's test BPC from eval.json (its block NELBO, an
estimate of the same AR loss; ``vmd_jax.judge``'s docstring), with the
unigram entropy and repeated 4-gram share of each.

  python benchmarks/judge_real_vs_shuffled.py --judge=runs/text8_cpu/judge/seed0
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from vmd_jax.trainer import build, io
from vmd_jax.trainer.judge import load_judge
from vmd_jax.trainer.load import load_config


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--judge", required=True, help="the judge's workdir")
  parser.add_argument("--seed", type=int, default=0, help="seed of the permutations")
  args = parser.parse_args()
  config = load_config(args.judge)
  dataset = build.build_dataset(config)
  judge = load_judge(args.judge, config, dataset.vocab_size, dataset.seq_len)
  windows = np.concatenate([b["x0"][b["weight"].all(-1)] for b in dataset.eval_batches(256)])
  shuffled = np.random.default_rng(args.seed).permuted(windows, axis=1)
  nelbo = io.read_json(io.as_path(args.judge) / "eval.json")["nelbo"]
  print(json.dumps({
      "judge": args.judge, "step": judge.step, "windows": len(windows),
      "characters": int(windows.size),
      "test_bpc_nelbo": nelbo["nelbo_bits_per_token"],
      "test_bpc_nelbo_stderr": nelbo["nelbo_bits_per_token_stderr"],
      "real": judge.score(windows), "shuffled": judge.score(shuffled)}, indent=2))


if __name__ == "__main__":
  main()
