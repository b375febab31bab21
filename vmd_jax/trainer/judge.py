"""A trained autoregressive judge (``configs/text8_judge.py``) scoring another
run's samples: ``vmd-jax evaluate --workdir=RUN --judge=JUDGE_WORKDIR``.

The judge is a block-diffusion run with L' = 1 (an AR model; ``vmd_jax.judge``).
``open_judge`` checks it against the evaluated run before any checkpoint is read
and refuses, in one line naming the judge (``load.BadInput``), one that cannot
score it: another dataset or text source, another vocabulary, L' != 1, MDM-Prime
digits, VMD latents, or windows shorter than the run's (``data.text8.path`` is not
compared: the same text may sit at other paths). ``Judge.score`` gives,
for samples int [S, L]:

  judge_bits_per_char   -sum log2 p_judge(x^n | x^{<n}) / (S L), pooled
  unigram_entropy_bits  the pooled character distribution's entropy
  repeated_4gram_share  4-grams repeating an earlier one of the same sample

(``vmd_jax.judge``; real text8: about 4.1 bits of unigram entropy).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from vmd_jax import judge as judge_math
from vmd_jax.networks import adapters
from vmd_jax.trainer.load import BadInput, Run, open_run, restore_ema

SCORE_BATCH = 64  # rows per judge call
REFERENCE_WINDOWS = 256  # real windows in the reference row (a few samples' worth is noise)


def open_judge(judge_workdir, run_config, vocab_size: int, seq_len: int) -> Run:
  """The judge run in ``judge_workdir`` (no checkpoint read), checked against the
  evaluated run's config and its (V, L); ``BadInput`` in one line otherwise."""
  try:
    judge = open_run(judge_workdir)
  except FileNotFoundError as e:
    raise BadInput(f"--judge={judge_workdir}: {e}") from None
  c, d = judge.config, run_config.data
  problem = None
  if c.data.name != d.name:
    problem = f"trained on {c.data.name!r} data, the run on {d.name!r}"
  elif d.name == "text8" and c.data.text8.source != d.text8.source:
    problem = (f"trained on text8.source {c.data.text8.source!r}, the run on "
               f"{d.text8.source!r}")
  elif judge.vocab_size != vocab_size:
    problem = f"a vocabulary of {judge.vocab_size} tokens, the run's has {vocab_size}"
  elif c.diffusion.block_size != 1:
    problem = (f"diffusion.block_size = {c.diffusion.block_size}, an AR judge needs 1 "
               "(configs/text8_judge.py)")
  elif c.diffusion.prime_digits != 1 or c.model.kind != "md4":
    problem = "an AR judge is an 'md4' model without MDM-Prime digits (configs/text8_judge.py)"
  elif judge.seq_len < seq_len:
    problem = f"trained on windows of {judge.seq_len} tokens, the run samples {seq_len}"
  if problem:
    raise BadInput(f"--judge={judge_workdir} cannot judge this run: {problem}")
  return judge


class Judge(NamedTuple):
  """An opened judge with its EMA parameters; ``score(tokens)`` is its row."""
  workdir: str
  run: Run
  params: dict
  step: int
  log_probs_fn: Callable  # jitted (params, tokens [B, L]) -> log-probs [B, L]

  def log_probs(self, tokens) -> np.ndarray:
    """float64 [S, L] log p(x^n | x^{<n}) in nats of tokens int [S, L]
    (``judge.autoregressive_log_probs``, SCORE_BATCH rows a call)."""
    tokens = np.asarray(tokens, np.int32)
    return np.concatenate([np.asarray(self.log_probs_fn(self.params, tokens[i:i + SCORE_BATCH]),
                                      np.float64)
                           for i in range(0, len(tokens), SCORE_BATCH)])

  def score(self, tokens) -> dict:
    """``judge_bits_per_char``, ``unigram_entropy_bits`` and
    ``repeated_4gram_share`` of tokens int [S, L]."""
    return {"judge_bits_per_char": judge_math.bits_per_token(self.log_probs(tokens)),
            **judge_math.sample_statistics(tokens, self.run.vocab_size)}


def load_judge(judge_workdir, run_config, vocab_size: int, seq_len: int) -> Judge:
  """``open_judge``'s checks, then the judge's newest intact EMA parameters."""
  judge = open_judge(judge_workdir, run_config, vocab_size, seq_len)
  params, step = restore_ema(judge_workdir, judge)
  model = judge.model

  @jax.jit
  def log_probs_fn(params, tokens):
    denoise, _ = adapters.block_denoiser_fns(model.denoiser, params["denoiser"])
    return judge_math.autoregressive_log_probs(denoise, tokens, vocab_size=model.vocab_size)

  return Judge(str(judge_workdir), judge, params, step, log_probs_fn)


def reference_windows(dataset, num: int = REFERENCE_WINDOWS) -> np.ndarray:
  """int32 [num', L]: the first num' <= num whole windows of the evaluation
  split (``eval_batches``' first batch without its padding rows and a last
  window overlapping its predecessor): the real text the samples' statistics
  are compared with. More windows than a setting's few samples, so that the
  reference is the real text's value, not a draw (the plug-in entropy of S L
  characters is biased low by about (V - 1) / (2 S L ln 2) bits: 0.02 for 4
  text8 samples of 256)."""
  batch = next(iter(dataset.eval_batches(num)))
  return batch["x0"][batch["weight"].all(-1)]
