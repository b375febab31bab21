"""Synthetic tables: named joints, sampling, .npy loading, metrics and the figure."""

import math

import numpy as np
import pytest

from vmd_jax import exact
from vmd_jax.data import synthetic
from vmd_jax.data.synthetic import ProbabilityTable, get_synthetic, synthetic_metrics


def support_of(probs, vocab_size, seq_len):
  seqs = exact.all_sequences(vocab_size, seq_len)
  return {tuple(s): p for s, p in zip(seqs.tolist(), probs) if p > 0}


def test_two_token_tables():
  uniform = support_of(get_synthetic("two_token_uniform").probs, 10, 2)
  nonuniform = support_of(get_synthetic("two_token_nonuniform").probs, 10, 2)
  expected = {(k, (k + 1) % 10) for k in range(10)}
  assert set(uniform) == set(nonuniform) == expected
  for k in range(10):
    assert uniform[(k, (k + 1) % 10)] == pytest.approx(0.1, abs=1e-15)
    assert nonuniform[(k, (k + 1) % 10)] == pytest.approx((k + 1) / 55, abs=1e-15)


def test_d1_d2_tables():
  d1 = support_of(get_synthetic("d1").probs, 10, 4)
  d2 = support_of(get_synthetic("d2").probs, 10, 4)
  assert set(d1) == {tuple((k + i) % 10 for i in range(4)) for k in range(10)}
  assert set(d2) == {(k, (k + 1) % 10, l, (l + 1) % 10) for k in range(10) for l in range(10)}
  assert len(d1) == 10 and len(d2) == 100
  np.testing.assert_allclose(list(d1.values()), 0.1, atol=1e-15)
  np.testing.assert_allclose(list(d2.values()), 0.01, atol=1e-15)
  assert (9, 0, 1, 2) in d1 and (9, 0, 9, 0) in d2  # wraps mod 10


def test_registry():
  assert set(synthetic.SYNTHETIC) == {"two_token_uniform", "two_token_nonuniform", "d1", "d2"}
  table = get_synthetic("d2", seed=3)
  assert (table.vocab_size, table.seq_len, table.seed) == (10, 4, 3)
  with pytest.raises(ValueError, match="unknown synthetic dataset 'd3'.*'d1', 'd2'"):
    get_synthetic("d3")


def test_train_batches_deterministic_and_distinct():
  table = get_synthetic("d2", seed=7)
  batch = table.train_batch(5, 64)
  assert batch["x0"].dtype == np.int32 and batch["x0"].shape == (64, 4)
  np.testing.assert_array_equal(batch["x0"], get_synthetic("d2", seed=7).train_batch(5, 64)["x0"])
  assert not np.array_equal(batch["x0"], table.train_batch(6, 64)["x0"])
  assert not np.array_equal(batch["x0"], get_synthetic("d2", seed=8).train_batch(5, 64)["x0"])


@pytest.mark.parametrize("name", ["two_token_nonuniform", "d1", "d2"])
def test_samples_follow_table(name):
  # E[TV] <= sum_x sqrt(p(1-p)/n) / 2 (Jensen); one sample moves TV by <= 1/n, so by
  # McDiarmid P(TV > E[TV] + 0.015) <= exp(-2 n 0.015^2) = exp(-22.5) at n = 50,000.
  table, n = get_synthetic(name, seed=1), 50_000
  samples = table.train_batch(0, n)["x0"]
  tv = exact.total_variation(table.probs, exact.empirical_distribution(samples, 10))
  bound = 0.5 * np.sum(np.sqrt(table.probs * (1 - table.probs) / n)) + 0.015
  assert tv < bound, (tv, bound)
  assert synthetic_metrics(table.probs, samples, 10)["accuracy"] == 1.0


def test_eval_batches_fixed_and_padded():
  table = get_synthetic("d1", seed=0, num_eval=250)
  batches = list(table.eval_batches(100))
  assert len(batches) == 3
  for b in batches:
    assert b["x0"].shape == (100, 4) and b["x0"].dtype == np.int32
    assert b["weight"].shape == (100, 4) and b["weight"].dtype == np.float32
  np.testing.assert_array_equal(batches[2]["weight"][:50], 1.0)
  np.testing.assert_array_equal(batches[2]["weight"][50:], 0.0)
  real = np.concatenate([b["x0"] for b in batches])[:250]
  np.testing.assert_array_equal(real, table.eval_samples())
  # The same set for any training seed, and not a training batch.
  other = get_synthetic("d1", seed=5, num_eval=250)
  np.testing.assert_array_equal(real, other.eval_samples())
  assert not np.array_equal(real[:100], table.train_batch(0, 100)["x0"])
  assert synthetic_metrics(table.probs, real, 10)["accuracy"] == 1.0


def test_metrics_exact_values():
  probs = get_synthetic("two_token_nonuniform").probs
  # Each (k, k+1) repeated k+1 times: the empirical distribution is the table itself.
  samples = np.array([(k, (k + 1) % 10) for k in range(10) for _ in range(k + 1)])
  m = synthetic_metrics(probs, samples, 10)
  assert m["accuracy"] == 1.0
  assert m["kl"] == pytest.approx(0.0, abs=1e-12) and m["tv"] == pytest.approx(0.0, abs=1e-12)
  # D1, samples: 3 copies of one support sequence, 1 outside the support.
  d1 = get_synthetic("d1").probs
  samples = np.array([[0, 1, 2, 3]] * 3 + [[0, 0, 0, 0]])
  m = synthetic_metrics(d1, samples, 10)
  assert m["accuracy"] == 0.75
  kl = 0.1 * math.log(0.1 / 0.75) + 9 * 0.1 * math.log(0.1 / synthetic.KL_FLOOR)
  assert m["kl"] == pytest.approx(kl, rel=1e-12)
  assert m["tv"] == pytest.approx(0.5 * (0.65 + 0.9 + 0.25), rel=1e-12)
  with pytest.raises(ValueError, match="tokens in"):
    synthetic_metrics(d1, np.array([[0, 1, 2, 10]]), 10)


def test_metrics_one_step_product_of_marginals():
  # One-step sampling draws from the product of marginals: uniform over 10^4 for D1,
  # so P(in support) = 10/10^4. With n = 50,000 the count is Binomial(n, 1e-3):
  # mean 50, sd 7.07; 5 sd on the rate is 7.1e-4.
  d1 = get_synthetic("d1").probs
  marginals = exact.product_of_marginals(d1, 10, 4)
  np.testing.assert_allclose(marginals, 1e-4, rtol=1e-12)
  rng = np.random.default_rng(0)
  samples = exact.all_sequences(10, 4)[rng.choice(10**4, size=50_000, p=marginals)]
  m = synthetic_metrics(d1, samples, 10)
  assert abs(m["accuracy"] - 1e-3) < 7.1e-4
  assert m["tv"] > 0.99 and m["kl"] > 6.0  # KL >= log(0.1 / q) with q ~ 1e-4 on seen sequences


def test_kl_of_exact_samples_small():
  # KL(p || empirical) ~ (K - 1) / (2n) for K support sequences: 4.5e-4 (D1), 5e-3 (D2).
  for name, bound in [("d1", 5e-3), ("d2", 2e-2)]:
    table = get_synthetic(name, num_eval=10_000)
    m = synthetic_metrics(table.probs, table.eval_samples(), 10)
    assert m["accuracy"] == 1.0 and m["kl"] < bound, (name, m)


def test_from_npy_both_shapes(tmp_path):
  probs = get_synthetic("two_token_nonuniform").probs
  flat, grid = tmp_path / "flat.npy", tmp_path / "grid.npy"
  np.save(flat, probs)
  np.save(grid, probs.reshape(10, 10))
  for path in (flat, grid):
    table = synthetic.from_npy(path, 10, 2, seed=4)
    np.testing.assert_array_equal(table.probs, probs)
    named = get_synthetic("two_token_nonuniform", seed=4)
    np.testing.assert_array_equal(table.train_batch(0, 16)["x0"], named.train_batch(0, 16)["x0"])
  # Within the 1e-6 tolerance: accepted and renormalised.
  np.save(flat, probs * (1 + 5e-7))
  np.testing.assert_allclose(synthetic.from_npy(flat, 10, 2).probs.sum(), 1.0, rtol=1e-15)


@pytest.mark.parametrize("array,match", [
    (np.full(99, 1 / 99), r"needs shape \(100,\).*\(10, 10\).*got shape \(99,\)"),
    (np.full((10, 10, 1), 0.01), r"got shape \(10, 10, 1\)"),
    (np.r_[-0.01, 0.02, np.full(98, 0.01)], r"non-negative; entry 0 \(sequence \[0, 0\]\)"),
    (np.full(100, 0.011), r"sum to 1 .*1\.1"),
    (np.r_[np.nan, np.full(99, 0.01)], "finite"),
])
def test_from_npy_errors_name_the_file(tmp_path, array, match):
  path = tmp_path / "bad_table.npy"
  np.save(path, array)
  with pytest.raises(ValueError, match=match) as info:
    synthetic.from_npy(path, 10, 2)
  assert "bad_table.npy" in str(info.value)


def test_from_npy_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npy"):
    synthetic.from_npy(tmp_path / "nope.npy", 10, 2)


def test_joint_figure_is_png(tmp_path):
  table = get_synthetic("two_token_nonuniform")
  path = tmp_path / "joint.png"
  synthetic.save_joint_figure(table.probs, table.train_batch(0, 2000)["x0"], 10, path,
                              title="two tokens")
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  import matplotlib.image
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[1] > image.shape[0] > 100
  assert [p.name for p in tmp_path.iterdir()] == ["joint.png"]  # no temp file left
  with pytest.raises(ValueError, match="2-token"):
    synthetic.save_joint_figure(get_synthetic("d1").probs, np.zeros((4, 4), int), 10,
                                tmp_path / "d1.png")
  assert not (tmp_path / "d1.png").exists()
