"""Samplers against a known joint: exactness, one-step factorisation, givens, NFE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact
from vmd_jax.sampling import ORDERS, sample, top_p_logits
from vmd_jax.schedules import get_schedule

V, N, S = 3, 3, 20000
# Expected TV of an empirical histogram of S draws over 27 cells is ~0.5 * sum_k
# sqrt(2 p_k / (pi S)) <= 0.5 * sqrt(27 * 2 / (pi S)) ~ 0.015; the bound leaves room
# for that and nothing else of consequence.
TV_BOUND = 0.03


@pytest.fixture(scope="module")
def joint():
  p = np.random.default_rng(11).dirichlet(np.full(V**N, 0.7))
  return p, exact.exact_denoiser(p, V, N)


def draw(denoise, order, num_steps, key=0, schedule="linear", **kw):
  x_init = jnp.full((S, N), V, jnp.int32)
  fn = jax.jit(lambda k: sample(denoise, k, x_init, num_steps, get_schedule(schedule),
                                order=order, return_nfe=True, **kw))
  return fn(jax.random.key(key))


@pytest.mark.parametrize("order,num_steps,schedule", [
    ("first_hitting", 0, "linear"), ("first_hitting", 0, "cosine"),
    ("ancestral", 400, "linear"), ("ancestral", 400, "cosine"),
    ("random", N, "linear")])
def test_exact_denoiser_samples_the_joint(joint, order, num_steps, schedule):
  p, denoise = joint
  x, nfe = draw(denoise, order, num_steps, schedule=schedule)
  assert x.shape == (S, N) and x.dtype == jnp.int32
  assert int(jnp.sum(x == V)) == 0
  tv = exact.total_variation(exact.empirical_distribution(x, V), p)
  assert tv < TV_BOUND, tv
  if order in ("first_hitting", "random"):
    assert int(nfe) == N  # one token per call


def test_one_step_draws_the_product_of_marginals(joint):
  p, denoise = joint
  marginals = exact.product_of_marginals(p, V, N)
  assert exact.total_variation(marginals, p) > 0.1  # the joint is far from factorised
  for order in ("ancestral", "top_prob", "top_prob_margin", "random"):
    x, nfe = draw(denoise, order, 1)
    assert int(nfe) == 1
    tv = exact.total_variation(exact.empirical_distribution(x, V), marginals)
    assert tv < TV_BOUND, (order, tv)


def test_givens_never_change_and_condition_the_rest(joint):
  p, denoise = joint
  x_init = jnp.tile(jnp.array([[V, 2, V]], jnp.int32), (S, 1))
  for order in ORDERS:
    x = sample(denoise, jax.random.key(1), x_init, 3, get_schedule("linear"), order=order)
    assert bool(jnp.all(x[:, 1] == 2)), order
  # The exact conditional p(x0, x2 | x1 = 2) is recovered.
  x = sample(denoise, jax.random.key(2), x_init, 0, get_schedule("linear"), order="first_hitting")
  cond = p.reshape(V, V, V)[:, 2, :]
  cond = cond / cond.sum()
  emp = np.zeros((V, V))
  np.add.at(emp, (np.asarray(x[:, 0]), np.asarray(x[:, 2])), 1.0 / S)
  assert exact.total_variation(emp.ravel(), cond.ravel()) < TV_BOUND


def test_reusing_logits_saves_calls_and_counts_them(joint):
  _, denoise = joint
  x_init = jnp.full((1, N), V, jnp.int32)
  schedule = get_schedule("linear")
  run = jax.jit(lambda key, reuse: sample(denoise, key, x_init, 1000, schedule,
                                          return_nfe=True, reuse_logits=reuse),
                static_argnums=1)
  for seed in range(5):
    key = jax.random.key(seed)
    x_a, nfe_a = run(key, True)
    x_b, nfe_b = run(key, False)
    # With one sequence, a call happens first and after each step that revealed
    # something: at most N + 1 calls out of 1000, and the samples are identical
    # (the exact denoiser ignores t).
    assert 1 <= int(nfe_a) <= N + 1 and int(nfe_b) == 1000
    np.testing.assert_array_equal(x_a, x_b)
  # Nothing to generate: no call at all.
  full = jnp.zeros((2, N), jnp.int32)
  _, nfe = sample(denoise, key, full, 10, schedule, order="top_prob", return_nfe=True)
  assert int(nfe) == 0


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("order", ["top_prob", "top_prob_margin", "random"])
def test_confidence_orders_reveal_by_confidence_and_schedule(order, schedule):
  """The value drawn at a position is the number of masks left when it was revealed,
  so the sample records the step of every reveal."""
  length, steps, vocab = 8, 4, 9
  ramp = jnp.linspace(0.0, 2.0, length)
  def denoise(xt, t):
    left = jnp.sum(xt == vocab, axis=-1)  # [B]
    hot = jax.nn.one_hot(left, vocab) * 10.0  # [B, V]
    return hot[:, None, :] + ramp[None, :, None] * jax.nn.one_hot(left, vocab)[:, None, :]
  x_init = jnp.full((3, length), vocab, jnp.int32)
  x, nfe = sample(denoise, jax.random.key(0), x_init, steps, get_schedule(schedule),
                  order=order, temperature=0.0, return_nfe=True)
  assert int(nfe) == steps
  sched = get_schedule(schedule)
  grid = np.linspace(1.0, 0.0, steps + 1)
  left, expected_counts = length, {}
  for i in range(steps):
    keep = 0 if i == steps - 1 else int(np.floor(
        left * (1 - sched.alpha(grid[i + 1])) / (1 - sched.alpha(grid[i])) + 1e-6))
    expected_counts[left] = left - keep
    left = keep
  for row in np.asarray(x):
    values, counts = np.unique(row, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist())) == expected_counts
    if order != "random":  # the most confident (right-most) positions go first
      assert np.all(np.diff(row) >= 0), row


def test_top_p_keeps_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(top_p_logits(logits, 0.75)))
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = np.isfinite(np.asarray(top_p_logits(logits, 0.81)))
  np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_temperature_and_top_p_change_the_draws(joint):
  p, denoise = joint
  x, _ = draw(denoise, "ancestral", 1, temperature=0.0)
  # Greedy one-step sampling gives the argmax of each marginal, always.
  mode = [np.argmax(p.reshape(V, V, V).sum(axis=tuple(a for a in range(3) if a != n)))
          for n in range(N)]
  np.testing.assert_array_equal(np.asarray(x[0]), mode)
  assert bool(jnp.all(x == x[0]))


def test_bad_order_is_named():
  with pytest.raises(ValueError, match=r"unknown sampling order 'greedy'.*ancestral"):
    sample(lambda x, t: jnp.zeros(x.shape + (3,)), jax.random.key(0),
           jnp.full((1, 3), 3), 2, get_schedule("linear"), order="greedy")
