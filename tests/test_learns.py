"""Training learns: a tiny MD4 run reaches the data's entropy and samples its
support, and the same checks fail for an untrained model and for an update with its
sign flipped.

Every other end-to-end test accepts an untrained model (its bound near log V), and
the resume and multi-device tests compare the trainer with itself; this one holds
the trainer to a number fixed by the data alone. For i.i.d. sequences the NELBO is
an upper bound on the cross-entropy, E[NELBO] >= H(x0), with equality at the exact
denoiser, so a trained run must land just above H(x0) / N nats per token."""

import numpy as np
import optax
import pytest

from vmd_jax.data import synthetic
from vmd_jax.trainer import config as config_lib, state as state_lib, train

DATA = "two_token_nonuniform"  # P(k, k+1 mod 10) = (k+1)/55: H = 2.07 nats, log V = 2.30
MARGIN = 0.05  # nats per token above H / N that a trained run may sit


def entropy_per_token(name: str) -> float:
  """H(x0) / N of a named synthetic table, in nats."""
  table = synthetic.get_synthetic(name, num_eval=1)
  p = table.probs[table.probs > 0]
  return float(-(p * np.log(p)).sum()) / table.seq_len


def learned(workdir, lr: float = 3e-3, steps: int = 300,
            dtype: str = "float32") -> tuple[float, float]:
  """(NELBO nats per token on 2,000 held-out sequences, the share of 1,000
  samples drawn one token per call that lie in the data's support) after
  ``steps`` of MD4."""
  c = config_lib.base_config()
  c.data.name, c.data.synthetic.table, c.data.num_eval = "synthetic", DATA, 2000
  c.model.kind = "md4"
  c.model.width, c.model.depth, c.model.num_heads = 32, 1, 2
  c.model.dtype = dtype
  c.train.batch_size, c.train.num_steps, c.train.lr = 64, steps, lr
  c.train.warmup_steps, c.train.ema_decay = 10, 0.0
  c.train.log_every = c.train.checkpoint_every = steps
  c.eval.settings, c.eval.num_samples, c.eval.batch_size = "random:2", 1000, 1000
  c.eval.nelbo_samples = 8
  config_lib.validate(c)
  result = train.train_and_evaluate(c, str(workdir))
  return result["nelbo"]["nelbo_nats_per_token"], result["samples"]["random:2"]["accuracy"]


def reaches_entropy(nelbo: float, entropy: float) -> bool:
  """The check: a bound (>= H up to the eval set's noise) within MARGIN of H / N."""
  return entropy - 0.05 < nelbo < entropy + MARGIN


def test_entropy_of_the_table():
  """H of P(k, k+1) = (k+1)/55 by hand: sum over k of -(k+1)/55 log((k+1)/55)."""
  w = np.arange(1, 11) / 55
  assert entropy_per_token(DATA) == pytest.approx(-(w * np.log(w)).sum() / 2, rel=1e-12)
  assert entropy_per_token(DATA) < np.log(10) - 0.1  # the uniform bound is far off


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_training_reaches_the_entropy(tmp_path, dtype):
  """float32, and bfloat16 compute with float32 parameters (the TPU setting)."""
  entropy = entropy_per_token(DATA)
  nelbo, accuracy = learned(tmp_path / "trained", dtype=dtype)
  assert reaches_entropy(nelbo, entropy), (nelbo, entropy)
  # x^1 given x^0 is determined: the learned sampler's pairs are (k, k+1).
  assert accuracy > 0.95, accuracy


def test_untrained_model_fails_the_check(tmp_path):
  """lr = 1e-12: the model at initialisation, its bound near log V per token."""
  entropy = entropy_per_token(DATA)
  nelbo, accuracy = learned(tmp_path / "untrained", lr=1e-12, steps=20)
  assert not reaches_entropy(nelbo, entropy), (nelbo, entropy)
  assert nelbo > np.log(10) - 0.2
  assert accuracy < 0.3, accuracy  # 10 of the 100 pairs: about 0.1 when uniform


def test_sign_flipped_update_fails_the_check(tmp_path, monkeypatch):
  """The optimizer's update negated (gradient ascent): the check fails."""
  make = state_lib.make_optimizer
  monkeypatch.setattr(train, "make_optimizer",
                      lambda tc: optax.chain(make(tc), optax.scale(-1.0)))
  entropy = entropy_per_token(DATA)
  nelbo, _ = learned(tmp_path / "ascent")
  assert not reaches_entropy(nelbo, entropy), (nelbo, entropy)
