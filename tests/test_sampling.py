"""Samplers against a known joint: exactness, one-step factorisation, givens, NFE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact
from vmd_jax.sampling import (ORDERS, confidence_reveal_counts, draw_tokens, sample,
                              top_p_logits)
from vmd_jax.schedules import get_schedule, time_grid

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


def time_dependent(denoise, seed=12, scale=3.0):
  """An exact denoiser's logits plus scale cos(3 pi t) W[n, v]: which value is
  drawn depends strongly on the time the network is called at."""
  w = jnp.asarray(np.random.default_rng(seed).normal(size=(N, V)), jnp.float32)
  return lambda xt, t: denoise(xt) + scale * jnp.cos(3 * jnp.pi * t)[:, None, None] * w


def exact_ancestral(denoise, num_steps, schedule, grid="linear", frozen_t=None):
  """The exact law of the T-step ancestral sampler over V^N, float64 [V^N]: the
  distribution over the (V + 1)^N partially masked states pushed through every
  step's transition matrix (each masked token revealed with probability
  p_i = (alpha(t_{i+1}) - alpha(t_i)) / (1 - alpha(t_i)), all at the last step,
  its value from softmax(logits(x, t_i))). ``frozen_t``: call the network at that
  time instead (what reusing stale logits amounts to)."""
  states = exact.all_sequences(V + 1, N)  # [(V+1)^N, N]; V is the mask
  times = np.linspace(1.0, 0.0, num_steps + 1) if grid == "linear" else None
  alpha = np.asarray(schedule.alpha(jnp.asarray(times, jnp.float32)), np.float64)
  p_reveal = (alpha[1:] - alpha[:-1]) / (1.0 - alpha[:-1])
  p_reveal[-1] = 1.0
  call_t = np.full(num_steps, frozen_t) if frozen_t is not None else times[:-1]
  xs = jnp.asarray(np.repeat(states[None], num_steps, 0).reshape(-1, N))
  ts = jnp.asarray(np.repeat(call_t, len(states)), jnp.float32)
  logits = np.asarray(jax.jit(denoise)(xs, ts), np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs = (probs / probs.sum(-1, keepdims=True)).reshape(num_steps, len(states), N, V)
  masked_from = states == V  # [S, N]
  dist = np.zeros(len(states))
  dist[-1] = 1.0  # all masked
  for i in range(num_steps):
    trans = np.ones((len(states), len(states)))
    for n in range(N):
      y = states[:, n]
      value = probs[i, :, n, :][:, np.minimum(y, V - 1)] * p_reveal[i]  # [S, S]
      factor = np.where(y[None] == V, 1.0 - p_reveal[i], value)
      trans *= np.where(masked_from[:, n][:, None], factor, states[:, n][:, None] == y[None])
    dist = dist @ trans
  clean = np.all(states < V, axis=-1)
  assert abs(dist[clean].sum() - 1.0) < 1e-9
  return dist[clean]  # all_sequences(V + 1, N) restricted to V^N keeps V^N's order


@pytest.mark.parametrize("order,schedule", [("ancestral", "linear"), ("ancestral", "cosine"),
                                            ("first_hitting", "cosine")])
def test_time_dependent_denoiser_at_1000_steps_is_exact(joint, order, schedule):
  """With a time-conditioned denoiser, the skipping sampler at T = 1000 draws the
  exact T-step law (first hitting, its T -> infinity limit, within O(1/T)), in at
  most N calls however many sequences run; calling at a stale time would not."""
  _, denoise = joint
  fn, sched = time_dependent(denoise), get_schedule(schedule)
  target = exact_ancestral(fn, 1000, sched)
  stale = exact_ancestral(fn, 1000, sched, frozen_t=1.0)
  assert exact.total_variation(target, stale) > 0.1  # the time matters
  x, nfe = draw(fn, order, 1000, key=3, schedule=schedule)
  assert int(jnp.sum(x == V)) == 0
  tv = exact.total_variation(exact.empirical_distribution(x, V), target)
  assert tv < TV_BOUND, tv
  assert 1 <= int(nfe) <= N


def test_skipping_idle_steps_changes_no_sample(joint):
  """Same key, same samples with and without calls at idle steps, for a
  time-conditioned denoiser; the skipping run makes at most N calls."""
  _, denoise = joint
  fn = time_dependent(denoise)
  x_init = jnp.asarray(np.random.default_rng(4).choice([0, 1, V], size=(256, N),
                                                       p=[0.1, 0.1, 0.8]), jnp.int32)
  run = jax.jit(lambda key, skip: sample(fn, key, x_init, 100, get_schedule("cosine"),
                                         skip_idle=skip, return_nfe=True),
                static_argnums=1)
  x_skip, nfe_skip = run(jax.random.key(5), True)
  x_all, nfe_all = run(jax.random.key(5), False)
  np.testing.assert_array_equal(x_skip, x_all)
  # Without skipping: a call at every step up to the latest reveal in the batch.
  assert int(nfe_all) > 75 and 1 <= int(nfe_skip) <= N
  given = np.asarray(x_init) != V
  np.testing.assert_array_equal(np.asarray(x_skip)[given], np.asarray(x_init)[given])
  assert int(jnp.sum(x_skip == V)) == 0
  # Nothing to generate: no call at all.
  for order in ORDERS:
    _, nfe = sample(fn, jax.random.key(0), jnp.zeros((2, N), jnp.int32), 10,
                    get_schedule("linear"), order=order, return_nfe=True)
    assert int(nfe) == 0, order


def step_recorder(num_steps, length):
  """A denoiser whose only value is the grid step of the time it is called at
  (linear grid: t_i = 1 - i / T), so a greedy sample records every token's
  reveal step. Vocabulary T + 1."""
  def denoise(xt, t):
    step = jnp.round((1.0 - t) * num_steps).astype(jnp.int32)
    return jnp.broadcast_to(10.0 * jax.nn.one_hot(step, num_steps + 1)[:, None],
                            (xt.shape[0], length, num_steps + 1))
  return denoise


@pytest.mark.parametrize("steps", [5, 1000])
def test_ancestral_calls_each_sequence_at_its_own_reveal_steps(steps):
  """Every token is revealed from logits at its own step's time, the steps follow
  P(k > i) = (1 - alpha(t_{i+1})) / (1 - alpha(t_0)) (KS test), and the calls
  made are the most distinct reveal steps of any one sequence."""
  length, batch = 8, 1000
  schedule = get_schedule("cosine")
  x_init = jnp.full((batch, length), steps + 1, jnp.int32)
  x, nfe = jax.jit(lambda key: sample(step_recorder(steps, length), key, x_init, steps,
                                      schedule, temperature=0.0, return_nfe=True))(
                                          jax.random.key(2))
  x = np.asarray(x)
  assert 0 <= x.min() and x.max() < steps
  distinct = [len(np.unique(row)) for row in x]
  assert int(nfe) == max(distinct) <= length
  alpha = np.asarray(schedule.alpha(jnp.linspace(1.0, 0.0, steps + 1)), np.float64)
  cdf = 1.0 - (1.0 - alpha[1:]) / (1.0 - alpha[0])  # P(k <= i)
  cdf[-1] = 1.0
  empirical = np.searchsorted(np.sort(x.ravel()), np.arange(steps), side="right") / x.size
  ks = np.abs(empirical - cdf).max()
  assert ks < 1.95 / math.sqrt(x.size), ks  # 99.9% KS bound for i.i.d. steps
  # The reveal steps are drawn, not fixed: early and late ones both occur.
  assert x.min() < 0.1 * steps and x.max() == steps - 1


@pytest.mark.parametrize("order", ["top_prob", "random"])
def test_confidence_orders_stop_when_nothing_is_left(order):
  """T = 1000 steps for 8 tokens: every step reveals at least one token, so the
  calls are the steps up to the last reveal, each at that step's time."""
  steps, length = 1000, 8
  schedule = get_schedule("cosine")
  x_init = jnp.full((3, length), steps + 1, jnp.int32)
  x, nfe = sample(step_recorder(steps, length), jax.random.key(0), x_init, steps, schedule,
                  order=order, temperature=0.0, return_nfe=True)
  grid = np.linspace(1.0, 0.0, steps + 1)
  left, expected = length, []
  for i in range(steps):
    keep = 0 if i == steps - 1 or left == 0 else min(left - 1, int(np.floor(
        left * (1 - schedule.alpha(grid[i + 1])) / (1 - schedule.alpha(grid[i])) + 1e-6)))
    expected += [i] * (left - keep)
    left = keep
  assert int(nfe) == len(set(expected)) == length
  for row in np.asarray(x):
    np.testing.assert_array_equal(np.sort(row), expected)


@pytest.mark.parametrize("schedule,grid,steps,length", [
    ("cosine", "cosine", 64, 8), ("cosine", "cosine", 1000, 50), ("cosine", "cosine", 256, 16),
    ("cosine", "cosine", 8, 20), ("linear", "cosine", 64, 8), ("loglinear", "linear", 1000, 50)])
@pytest.mark.parametrize("order", ["top_prob", "random"])
def test_confidence_orders_reveal_at_every_step(order, schedule, grid, steps, length):
  """min(T, m) calls and, for T >= m, one token per step at t_0 .. t_{m-1}. Under
  the cosine schedule and grid the ratio (1 - alpha(t_1)) / (1 - alpha(t_0))
  rounds to 1 in float32, and the plain floor used to reveal nothing at the first
  steps (nfe 9 for T = 64, m = 8; 71 for T = 1000, m = 50)."""
  sched = get_schedule(schedule)
  times = time_grid(steps, grid)
  def recorder(xt, t):  # the value is the grid step of the call's time
    step = jnp.argmin(jnp.abs(times[None, :] - t[:, None]), axis=1)
    return jnp.broadcast_to(10.0 * jax.nn.one_hot(step, steps + 1)[:, None],
                            xt.shape + (steps + 1,))
  x_init = jnp.full((2, length), steps + 1, jnp.int32)
  x, nfe = sample(recorder, jax.random.key(0), x_init, steps, sched, order=order, grid=grid,
                  temperature=0.0, return_nfe=True)
  assert int(nfe) == min(steps, length)
  counts = np.asarray(confidence_reveal_counts(jnp.array([length]), steps, sched, grid))[0]
  assert counts.sum() == length and np.all(counts[:min(steps, length)] >= 1)
  for row in np.asarray(x):
    revealed_at = np.bincount(row, minlength=steps)
    np.testing.assert_array_equal(revealed_at, counts)
    if steps >= length:
      np.testing.assert_array_equal(np.sort(row), np.arange(length))


def test_confidence_counts_keep_the_equal_share_of_the_linear_schedule():
  linear = get_schedule("linear")
  counts = confidence_reveal_counts(jnp.array([8, 51, 3, 0]), 4, linear, "linear")
  np.testing.assert_array_equal(counts[:2], [[2, 2, 2, 2], [13, 13, 13, 12]])
  np.testing.assert_array_equal(counts[2:], [[1, 1, 1, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(confidence_reveal_counts(jnp.array([51]), 3, linear), [[17] * 3])


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
  # A traced top_p cannot be checked; <= 0 or NaN still keeps the most likely value.
  for bad in (0.0, float("nan")):
    kept = np.isfinite(np.asarray(jax.jit(top_p_logits)(logits, bad)))
    np.testing.assert_array_equal(kept, [[True, False, False, False]])


@pytest.mark.parametrize("order", ["ancestral", "first_hitting", "top_prob"])
def test_top_p_draws_stay_in_the_nucleus(order):
  # p = (0.45, 0.35, 0.2): the 0.5-nucleus is {0, 1}, drawn with 0.45 / 0.8 and 0.35 / 0.8.
  logits = jnp.log(jnp.array([0.45, 0.35, 0.2]))
  denoise = lambda x, t: jnp.broadcast_to(logits, x.shape + (V,))
  x, _ = draw(denoise, order, 1 if order == "ancestral" else N, top_p=0.5)
  counts = np.bincount(np.asarray(x).ravel(), minlength=V) / x.size
  assert counts[2] == 0.0
  assert abs(counts[0] - 0.45 / 0.8) < 4 * math.sqrt(0.25 / x.size), counts


@pytest.mark.parametrize("top_p", [0.0, -0.5, float("nan"), 1.5])
def test_top_p_outside_zero_one_is_rejected(top_p):
  zero = lambda x, t: jnp.zeros(x.shape + (V,))
  with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] or None"):
    sample(zero, jax.random.key(0), jnp.full((1, N), V), 2, get_schedule("linear"),
           top_p=top_p)
  with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
    top_p_logits(jnp.zeros((1, V)), top_p)


@pytest.mark.parametrize("temperature", [-1.0, float("nan"), float("inf")])
def test_temperature_negative_or_not_finite_is_rejected(temperature):
  """-1 used to sample the inverted distribution and NaN token 0 everywhere."""
  zero = lambda x, t: jnp.zeros(x.shape + (V,))
  message = r"temperature must be a finite number >= 0 \(0: greedy\), got "
  with pytest.raises(ValueError, match=message):
    sample(zero, jax.random.key(0), jnp.full((1, N), V), 2, get_schedule("linear"),
           temperature=temperature)
  with pytest.raises(ValueError, match=message):
    draw_tokens(jax.random.key(0), jnp.zeros((1, V)), temperature)


def test_temperature_and_top_p_change_the_draws(joint):
  p, denoise = joint
  x, _ = draw(denoise, "ancestral", 1, temperature=0.0)
  # Greedy one-step sampling gives the argmax of each marginal, always.
  mode = [np.argmax(p.reshape(V, V, V).sum(axis=tuple(a for a in range(3) if a != n)))
          for n in range(N)]
  np.testing.assert_array_equal(np.asarray(x[0]), mode)
  assert bool(jnp.all(x == x[0]))


@pytest.mark.parametrize("order", ["ancestral", "first_hitting", "top_prob"])
@pytest.mark.parametrize("shape", [(4, V), (2, 1, V), (2, V, 4)])
def test_logits_of_the_wrong_shape_are_named(order, shape):
  """[N, V] (batch dropped), [B, 1, V] (one position, which used to give every
  position revealed at a step the same drawn value) and [B, V, N] (axes swapped)
  for x_init [2, 4]: a one-line ValueError with both shapes, V given or inferred."""
  wrong = lambda x, t: jnp.zeros(shape)
  x_init = jnp.full((2, 4), V, jnp.int32)
  expected = rf"denoise_fn returned logits of shape \({', '.join(map(str, shape))}\), " \
             rf"expected \[B, N, V\] = \(2, 4, {shape[-1]}\)"
  with pytest.raises(ValueError, match=expected):
    sample(wrong, jax.random.key(0), x_init, 4, get_schedule("linear"), order=order)
  with pytest.raises(ValueError, match=r"expected \[B, N, V\] = \(2, 4, 3\)"):
    sample(wrong, jax.random.key(0), x_init, 4, get_schedule("linear"), order=order,
           vocab_size=V)


@pytest.mark.parametrize("order", ["ancestral", "top_prob"])
def test_traced_temperature_and_top_p(joint, order):
  """temperature and top_p as jit arguments, or vmapped over, draw what the same
  concrete values draw from the same key (they used to raise
  TracerBoolConversionError); a traced 0 is exactly the argmax, a traced top_p = 1
  is top_p off."""
  _, denoise = joint
  x_init = jnp.full((256, N), V, jnp.int32)
  run = lambda key, temperature, top_p: sample(
      denoise, key, x_init, 2, get_schedule("linear"), order=order, temperature=temperature,
      top_p=top_p)
  traced = jax.jit(run)
  key = jax.random.key(4)
  for temperature, top_p, concrete_top_p in [(0.7, 0.6, 0.6), (0.0, 0.6, 0.6),
                                             (1.3, 1.0, None)]:
    want = jax.jit(lambda k: run(k, temperature, concrete_top_p))(key)
    np.testing.assert_array_equal(traced(key, temperature, top_p), want)
  assert len(np.unique(np.asarray(traced(key, 1.3, 1.0)), axis=0)) > 5  # not greedy
  temperatures = jnp.array([0.0, 1.3])
  both = jax.jit(jax.vmap(lambda t: run(key, t, None)))(temperatures)
  for row, temperature in zip(both, [0.0, 1.3]):
    np.testing.assert_array_equal(row, jax.jit(lambda k: run(k, temperature, None))(key))


def test_bad_order_is_named():
  with pytest.raises(ValueError, match=r"unknown sampling order 'greedy'.*ancestral"):
    sample(lambda x, t: jnp.zeros(x.shape + (3,)), jax.random.key(0),
           jnp.full((1, 3), 3), 2, get_schedule("linear"), order="greedy")


def test_empirical_distribution_rejects_values_outside_the_vocabulary():
  p = exact.empirical_distribution(np.array([[0, 2], [0, 2], [1, 0]]), 3)
  np.testing.assert_allclose(p, np.eye(9)[2] * 2 / 3 + np.eye(9)[3] / 3)
  for bad in (3, -1):  # 3: the mask id, counted as sequence [1, 0] before
    with pytest.raises(ValueError, match=rf"samples holds token {bad} at \(0, 1\), outside"):
      exact.empirical_distribution(np.array([[0, bad]]), 3)
