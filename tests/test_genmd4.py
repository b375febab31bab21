"""GenMD4 (state-dependent masking) against exact answers on enumerable joints."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact, genmd4, losses, md4
from vmd_jax.schedules import MD4_EPS, get_schedule

V = 3
UNEQUAL = [(0.5, 1.0, 2.5), (2.0, 0.7, 1.3)]


def random_joint(seed, length, concentration=0.5):
  return np.random.default_rng(seed).dirichlet(np.full(V**length, concentration))


def table_denoiser(seed, length, time_scale=0.0):
  """A fixed, non-exact denoiser: logits of position n from a random table
  indexed by the token at the previous position (cyclically), plus a t term."""
  rng = np.random.default_rng(seed)
  table = jnp.asarray(rng.normal(size=(length, V + 1, V)), jnp.float32)
  slope = jnp.asarray(rng.normal(size=(V,)), jnp.float32) * time_scale

  def denoise_fn(xt, t):
    prev = jnp.roll(xt, 1, axis=-1)
    return table[jnp.arange(length)[None, :], prev] + slope * t[:, None, None]

  return denoise_fn


def test_schedule_derivative_boundaries_and_parameterisation():
  w = jnp.array([0.5, 1.0, 2.5])
  params = genmd4.params_from_exponents(w)
  np.testing.assert_allclose(genmd4.exponents(params), w, rtol=1e-6)
  np.testing.assert_allclose(genmd4.exponents(genmd4.init_params(4)), np.ones(4), rtol=1e-6)
  t = jnp.linspace(0.05, 0.95, 7)

  @jax.jit
  def values(params, t):
    return {eps: (genmd4.alpha(params, t, eps=eps), genmd4.dalpha(params, t, eps=eps),
                  genmd4.weight(params, t, eps=eps), genmd4.log_mask_prob(params, t, eps=eps),
                  jax.vmap(jax.jacfwd(lambda s: genmd4.alpha(params, s, eps=eps)))(t),
                  genmd4.alpha(params, jnp.array([0.0, 1.0]), eps=eps))
            for eps in (0.0, 1e-2)}
  for eps, (a, da, lam, log_mask, autodiff, ends) in values(params, t).items():
    chex.assert_shape([a, da, lam, log_mask], (7, V))
    np.testing.assert_allclose(da, autodiff, rtol=1e-4)
    np.testing.assert_allclose(lam, -autodiff / (1.0 - a), rtol=1e-4)
    np.testing.assert_allclose(jnp.exp(log_mask), 1.0 - a, rtol=1e-4)
    np.testing.assert_allclose(ends, [[1 - eps] * V, [eps] * V], atol=1e-7)
    for v in range(V):  # each value follows its own polynomial schedule
      np.testing.assert_allclose(
          a[:, v], get_schedule("polynomial", k=float(w[v]), eps=eps).alpha(t), rtol=1e-5)
  assert np.all(np.diff(np.asarray(a), axis=0) < 0)
  # Low exponents mask early: at t = 0.5 value 0 (w = 0.5) is masked most often.
  assert np.all(np.diff(np.asarray(genmd4.alpha(params, 0.5))) > 0)


@pytest.mark.parametrize("w", [0.01, 0.03])
def test_small_exponents_are_exact_at_t_zero(w):
  # t^w is 0 at t = 0 for any w > 0 (1e-30^0.01 = 0.5: a clipped t is far off).
  params = genmd4.params_from_exponents(jnp.full((V,), w))
  t = jnp.array([0.0, 1e-6, 0.5])
  for eps in (0.0, MD4_EPS):
    closed = (1 - 2 * eps) * (1 - np.array([0.0, 1e-6, 0.5])[:, None] ** w) + eps
    np.testing.assert_allclose(genmd4.alpha(params, t, eps=eps), np.tile(closed, (1, V)),
                               rtol=1e-5)
    np.testing.assert_allclose(jnp.exp(genmd4.log_mask_prob(params, t, eps=eps)),
                               np.tile(1 - closed, (1, V)), rtol=1e-4)
  # At t = 0 a token is masked iff its noise >= alpha(0) = 1 - eps.
  x0 = jnp.zeros((1, 8), jnp.int32)
  noise = jnp.array([[1 - 2 * MD4_EPS] * 4 + [1 - MD4_EPS / 2] * 4])
  xt = genmd4.mask_by_value(params, x0, jnp.array([0.0]), noise=noise)
  np.testing.assert_array_equal(xt, [[0] * 4 + [V] * 4])
  zero = lambda xt, t: jnp.zeros(xt.shape + (V,))
  terms = genmd4.nelbo_terms(zero, x0, jax.random.key(0), params, t=jnp.array([0.5]))
  np.testing.assert_allclose(terms["reconstruction"], [8 * MD4_EPS * math.log(V)], rtol=1e-4)
  np.testing.assert_allclose(terms["prior"], [8 * MD4_EPS * math.log(V)], rtol=1e-4)
  # The exponents' gradient stays finite with a draw at t = 0.
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(8, V)), jnp.float32)
  grads = jax.grad(lambda p, th: jnp.mean(genmd4.rloo_loss(
      lambda xt, t: jnp.broadcast_to(th * logits, xt.shape + (V,)), jnp.zeros((2, 8), jnp.int32),
      jax.random.key(1), p, t=jnp.array([0.0, 0.5]))["loss"]), argnums=(0, 1))(params, 1.0)
  chex.assert_tree_all_finite(grads)


def test_forward_process_masks_each_value_at_its_own_rate():
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[0]))
  x0 = jnp.tile(jnp.arange(V, dtype=jnp.int32)[None], (40000, 1))
  t = jnp.full((40000,), 0.3)
  xt, alpha, keep = jax.jit(lambda k: (genmd4.mask_by_value(params, x0, t, key=k),
                                        genmd4.alpha(params, 0.3),
                                        genmd4.token_alpha(params, x0[:2], t[:2])))(
                                            jax.random.key(0))
  chex.assert_shape(xt, x0.shape)
  chex.assert_type(xt, jnp.int32)
  assert bool(jnp.all((xt == x0) | (xt == V)))
  rate = np.asarray(jnp.mean(xt == V, axis=0))
  want = 1.0 - np.asarray(alpha)
  np.testing.assert_allclose(rate, want, atol=4 * np.sqrt(0.25 / 40000))
  # Explicit noise: masked iff noise >= alpha_{x_0}(t).
  noise = jnp.stack([keep[0] - 1e-3, keep[1] + 1e-3])
  xt = jax.jit(lambda u: genmd4.mask_by_value(params, x0[:2], t[:2], noise=u))(noise)
  np.testing.assert_array_equal(xt, [[0, 1, 2], [V, V, V]])


@pytest.mark.parametrize("w", UNEQUAL + [(1.5, 1.5, 1.5)])
def test_expected_nelbo_equals_nll_with_exact_denoiser(w):
  n = 3
  p = random_joint(0, n)
  seqs = exact.all_sequences(V, n)
  params = genmd4.params_from_exponents(jnp.array(w))
  denoise = genmd4.exact_denoiser(p, params, V, n, eps=0.0)
  values = np.asarray(genmd4.expected_nelbo(denoise, seqs, params, eps=0.0))
  np.testing.assert_allclose(values, -np.log(p), atol=1e-3)
  if w == UNEQUAL[0]:
    # MD4's time-independent exact denoiser is not the posterior here.
    md4_values = np.asarray(genmd4.expected_nelbo(
        exact.exact_denoiser(p, V, n), seqs, params, eps=0.0))
    assert np.max(np.abs(md4_values + np.log(p))) > 0.1


def test_exact_denoiser_single_token_posterior():
  # N = 1: p(x_0 = v | masked at t) ∝ p(v) (1 - alpha_v(t)).
  p = np.array([0.2, 0.5, 0.3])
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[0]))
  t = jnp.array([0.1, 0.5, 0.9])
  denoise = genmd4.exact_denoiser(p, params, V, 1)
  probs, alpha = jax.jit(lambda t: (jax.nn.softmax(denoise(jnp.full((3, 1), V), t)[:, 0]),
                                    genmd4.alpha(params, t)))(t)
  want = p * (1.0 - np.asarray(alpha))
  np.testing.assert_allclose(probs, want / want.sum(-1, keepdims=True), rtol=1e-4)


@pytest.mark.parametrize("k,eps", [(0.5, MD4_EPS), (2.0, 0.0)])
def test_equal_exponents_reduce_to_md4_per_draw(k, eps):
  n, batch = 3, 64
  denoise = table_denoiser(1, n, time_scale=1.0)
  rng = np.random.default_rng(0)  # numpy draws: no PRNG kernels to compile
  x0 = jnp.asarray(rng.integers(0, V, (batch, n)), jnp.int32)
  t = jnp.asarray(rng.uniform(size=batch), jnp.float32)
  noise = jnp.asarray(rng.uniform(size=(batch, n)), jnp.float32)
  params = genmd4.params_from_exponents(jnp.full((V,), k))
  got = jax.jit(lambda x, t, u: genmd4.nelbo_terms(denoise, x, None, params, eps=eps, t=t,
                                                   noise=u))(x0, t, noise)
  schedule = get_schedule("polynomial", k=k, eps=eps)
  want = jax.jit(lambda x, t, u: md4.nelbo_terms(denoise, x, None, schedule, t=t,
                                                        noise=u))(x0, t, noise)
  for name in ("nelbo", "diffusion", "reconstruction", "prior", "per_token", "t"):
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)
  assert 0 < int(jnp.sum(got["xt"] == V)) < batch * n


def test_equal_exponents_reduce_to_md4_in_expectation(k=2.0):
  n = 2
  denoise = table_denoiser(2, n)
  seqs = exact.all_sequences(V, n)
  params = genmd4.params_from_exponents(jnp.full((V,), k))
  got = np.asarray(genmd4.expected_nelbo(denoise, seqs, params))
  want = exact.expected_nelbo(denoise, seqs, get_schedule("polynomial", k=k), V)
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_wrong_denoisers_bound_the_entropy():
  n = 3
  p = random_joint(4, n)
  seqs = exact.all_sequences(V, n)
  h = exact.entropy(p)
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[1]))
  right = np.asarray(genmd4.expected_nelbo(genmd4.exact_denoiser(p, params, V, n, eps=0.0),
                                           seqs, params, eps=0.0))
  np.testing.assert_allclose(float(np.dot(p, right)), h, atol=1e-3)
  wrong = {
      "md4_exact": exact.exact_denoiser(p, V, n),
      "other_joint": genmd4.exact_denoiser(random_joint(5, n), params, V, n, eps=0.0),
      "table": table_denoiser(3, n, time_scale=1.0),
  }
  for name, denoise in wrong.items():
    values = np.asarray(genmd4.expected_nelbo(denoise, seqs, params, eps=0.0))
    assert float(np.dot(p, values)) > h + 1e-3, name
    # A valid bound on the model's own likelihood: never below 0.
    assert np.all(values > 0), name


def _per_sample_grads(denoise_of, x0, t, noise, raw, theta):
  """Per-sequence gradients of (loss, nelbo) w.r.t. (raw_w, theta): two pairs of [B, V]."""
  def one(r, th, x, tt, u):
    out = genmd4.rloo_loss(denoise_of(th), x[None], None, genmd4.GenMD4Params(r), eps=0.0,
                           t=tt[None], noise=u[:, None])
    return jnp.stack([out["loss"][0], out["nelbo"][0]])
  jac = jax.jit(jax.vmap(jax.jacrev(one, argnums=(0, 1)), in_axes=(None, None, 0, 0, 1)))(
      raw, theta, x0, t, noise)
  jac = [np.asarray(j, np.float64) for j in jac]  # each [B, 2, V]
  return (jac[0][:, 0], jac[1][:, 0]), (jac[0][:, 1], jac[1][:, 1])


def test_rloo_gradient_matches_finite_differences_of_exact_nelbo():
  n, reps = 2, 4000
  seqs = exact.all_sequences(V, n)
  base = table_denoiser(6, n)

  def denoise_of(theta):  # a non-exact denoiser with parameters theta [V]
    return lambda xt, t: base(xt, t) + theta * (1.0 + t[:, None, None])

  raw = genmd4.params_from_exponents(jnp.array([0.8, 1.5, 2.5])).raw_w
  theta = jnp.array([0.3, -0.2, 0.1])

  @jax.jit
  def objective(raw, theta):  # mean over all sequences of the exact expected NELBO
    return jnp.mean(genmd4.expected_nelbo(denoise_of(theta), seqs, genmd4.GenMD4Params(raw),
                                          eps=0.0, num_quadrature=64, time_power=2.0))

  h = 1e-2
  eye = np.eye(V, dtype=np.float32)
  fd_raw = np.array([(objective(raw + h * e, theta) - objective(raw - h * e, theta)) / (2 * h)
                     for e in eye])
  fd_theta = np.array([(objective(raw, theta + h * e) - objective(raw, theta - h * e)) / (2 * h)
                       for e in eye])
  assert np.max(np.abs(fd_raw)) > 0.05 and np.max(np.abs(fd_theta)) > 0.05

  x0 = jnp.asarray(np.tile(seqs, (reps, 1)))
  rng = np.random.default_rng(0)
  t = jnp.asarray(rng.uniform(size=x0.shape[0]), jnp.float32)
  noise = jnp.asarray(rng.uniform(size=(2,) + x0.shape), jnp.float32)
  (g_raw, g_theta), (p_raw, _) = _per_sample_grads(denoise_of, x0, t, noise, raw, theta)
  for est, ref in ((g_raw, fd_raw), (g_theta, fd_theta)):
    mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
    assert np.all(np.abs(mean - ref) < 4 * se + 2e-3), (mean, ref, se)
  # The batched surrogate's gradient is the mean of the per-sample ones.
  batched = jax.jit(jax.grad(lambda r, th: jnp.mean(genmd4.rloo_loss(
      denoise_of(th), x0, None, genmd4.GenMD4Params(r), eps=0.0, t=t, noise=noise)["loss"]),
      argnums=(0, 1)))(raw, theta)
  np.testing.assert_allclose(batched[0], g_raw.mean(0), rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(batched[1], g_theta.mean(0), rtol=1e-3, atol=1e-5)
  # Without the score-function term the exponents' gradient is biased.
  se = p_raw.std(0) / math.sqrt(len(p_raw))
  assert np.max(np.abs(p_raw.mean(0) - fd_raw) / se) > 10


def test_rloo_loss_value_shapes_and_jit():
  n, batch = 4, 8
  denoise = table_denoiser(7, n, time_scale=1.0)
  params = genmd4.init_params(V, power_init=1.5)
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.integers(0, V, (batch, n)), jnp.int32)
  out = jax.jit(lambda k: genmd4.rloo_loss(denoise, x0, k, params))(jax.random.key(2))
  for name in ("loss", "nelbo", "diffusion", "reconstruction", "prior", "score", "t"):
    chex.assert_shape(out[name], (batch,))
    chex.assert_type(out[name], jnp.float32)
  chex.assert_shape(out["per_token"], (batch, n))
  chex.assert_shape(out["xt"], (2, batch, n))
  np.testing.assert_allclose(out["loss"], out["nelbo"], rtol=1e-6)
  np.testing.assert_allclose(out["per_token"].sum(-1), out["nelbo"], rtol=1e-5)
  # The two draws share t and differ in their masks.
  assert bool(jnp.any(out["xt"][0] != out["xt"][1]))
  chex.assert_tree_all_finite(out)
  np.testing.assert_allclose(out["reconstruction"], n * MD4_EPS * math.log(V), rtol=1e-5)
  np.testing.assert_allclose(out["prior"], n * MD4_EPS * math.log(V), rtol=1e-5)
  # Stratified times by default, as in md4.nelbo_terms.
  gaps = np.diff(np.sort(np.asarray(out["t"])))
  np.testing.assert_allclose(gaps, 1.0 / batch, atol=1e-5)
  with pytest.raises(ValueError, match="key or explicit noise"):
    genmd4.rloo_loss(denoise, x0, None, params, t=jnp.zeros(batch))


def test_reverse_step_is_the_exact_single_token_transition():
  # N = 1 with the exact posterior: P(x_s = v | x_t = m) = p(v) (alpha_v(s) - alpha_v(t))
  # / sum_u p(u) (1 - alpha_u(t)), for eps = 0 and eps > 0.
  p = np.array([0.2, 0.5, 0.3])
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[0]))
  t, s = jnp.array([0.8, 0.3]), jnp.array([0.5, 0.0])
  for eps in (0.0, 0.01):
    denoise = genmd4.exact_denoiser(p, params, V, 1, eps=eps)
    log_probs = jax.jit(lambda t, s: genmd4.reverse_log_probs(
        denoise(jnp.full((2, 1), V), t), params, t, s, eps=eps))(t, s)
    probs = np.exp(np.asarray(log_probs))[:, 0]
    chex.assert_shape(probs, (2, V + 1))
    a_t, a_s = (np.asarray(genmd4.alpha(params, x, eps=eps)) for x in (t, s))
    want = p * (a_s - a_t) / np.sum(p * (1 - a_t), axis=-1, keepdims=True)
    np.testing.assert_allclose(probs[:, :V], want, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def _sampler(denoise, num_steps):
  """A jitted ``(key, x_init, params) -> (samples, nfe)`` at eps = 0."""
  return jax.jit(lambda key, x_init, params: genmd4.sample(
      denoise, key, x_init, num_steps, params, eps=0.0, return_nfe=True))


def test_sampler_with_exact_denoiser_draws_the_joint():
  n, num, steps = 2, 20000, 32
  p = random_joint(3, n, concentration=0.7)
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[0]))
  denoise = genmd4.exact_denoiser(p, params, V, n, eps=0.0)
  x_init = jnp.full((num, n), V, jnp.int32)
  draw = _sampler(denoise, steps)
  x, nfe = draw(jax.random.key(0), x_init, params)
  chex.assert_shape(x, (num, n))
  chex.assert_type(x, jnp.int32)
  assert int(jnp.sum(x == V)) == 0 and int(nfe) == steps
  # Sampling error alone: ~0.5 sum_k sqrt(2 p_k / (pi S)) <= 0.013 for 9 cells.
  assert exact.total_variation(exact.empirical_distribution(x, V), p) < 0.025
  # The schedule matters: the same denoiser sampled with the linear schedule is off.
  x, _ = draw(jax.random.key(1), x_init, genmd4.init_params(V))
  assert exact.total_variation(exact.empirical_distribution(x, V), p) > 0.1


def test_sampler_keeps_givens_and_samples_the_conditional():
  n, num = 2, 20000
  p = random_joint(8, n, concentration=0.7)
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[1]))
  denoise = genmd4.exact_denoiser(p, params, V, n, eps=0.0)
  x_init = jnp.tile(jnp.array([[V, 1]], jnp.int32), (num, 1))
  draw = _sampler(denoise, 16)
  x, _ = draw(jax.random.key(1), x_init, params)
  assert bool(jnp.all(x[:, 1] == 1))
  cond = p.reshape(V, V)[:, 1] / p.reshape(V, V)[:, 1].sum()
  emp = np.bincount(np.asarray(x[:, 0]), minlength=V) / num
  assert exact.total_variation(emp, cond) < 0.02
  # Nothing masked: no denoiser call.
  _, nfe = draw(jax.random.key(2), x, params)
  assert int(nfe) == 0


_PARAMS4 = genmd4.init_params(4)
_ZERO4 = lambda x, t: jnp.zeros(x.shape + (4,))
_ENTRY_POINTS = {
    "nelbo_terms": lambda x: genmd4.nelbo_terms(_ZERO4, x, jax.random.key(0), _PARAMS4)["nelbo"],
    "rloo_loss": lambda x: genmd4.rloo_loss(_ZERO4, x, jax.random.key(0), _PARAMS4)["loss"],
}


@pytest.mark.parametrize("name", sorted(_ENTRY_POINTS))
@pytest.mark.parametrize("value", [4, 7, -1])
def test_losses_reject_tokens_outside_the_vocabulary(name, value):
  x = np.zeros((2, 6), np.int32)
  x[1, 4] = value
  with pytest.raises(ValueError, match=rf"x0 holds token {value} at \(1, 4\), outside \[0, 3\]"):
    _ENTRY_POINTS[name](jnp.asarray(x))
  x[1, 4] = 3
  assert np.all(np.isfinite(_ENTRY_POINTS[name](jnp.asarray(x))))


@pytest.mark.parametrize("value", [5, -2])
def test_sampler_rejects_bad_initial_tokens(value):
  x = np.full((2, 6), 4, np.int32)
  x[1, 4] = value
  with pytest.raises(ValueError, match=rf"x_init holds token {value} at \(1, 4\), outside "
                                       rf"\[0, 4\] \(V = 4, mask id 4\)"):
    genmd4.sample(_ZERO4, jax.random.key(0), jnp.asarray(x), 3, _PARAMS4)
  x[1, 4] = 2
  out = genmd4.sample(_ZERO4, jax.random.key(0), jnp.asarray(x), 3, _PARAMS4)
  assert int(out.max()) < 4 and int(out[1, 4]) == 2


@pytest.mark.parametrize("top_p", [0.0, float("nan")])
def test_sampler_rejects_top_p_outside_zero_one(top_p):
  with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
    genmd4.sample(_ZERO4, jax.random.key(0), jnp.full((1, 3), 4), 3, _PARAMS4, top_p=top_p)


@pytest.mark.parametrize("shape", [(6, 4), (2, 1, 4), (2, 4, 6)])
def test_sampler_names_logits_of_the_wrong_shape(shape):
  """[N, V], [B, 1, V] and [B, V, N] logits for x_init [2, 6]: a one-line
  ValueError with both shapes (the [B, 1, V] case used to fail inside lax.cond)."""
  expected = rf"denoise_fn returned logits of shape \({', '.join(map(str, shape))}\), " \
             rf"expected \[B, N, V\] = \(2, 6, 4\)"
  with pytest.raises(ValueError, match=expected):
    genmd4.sample(lambda x, t: jnp.zeros(shape), jax.random.key(0), jnp.full((2, 6), 4), 3,
                  _PARAMS4)


@pytest.mark.parametrize("temperature", [-1.0, float("nan")])
def test_sampler_rejects_negative_or_nan_temperature(temperature):
  with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0 "
                                       r"\(0: greedy\), got"):
    genmd4.sample(_ZERO4, jax.random.key(0), jnp.full((1, 3), 4), 3, _PARAMS4,
                  temperature=temperature)


def test_sampler_takes_traced_temperature_and_top_p():
  """temperature and top_p as jit arguments draw what the same concrete values
  draw from the same key (they used to raise TracerBoolConversionError); a traced
  temperature of 0 is exactly greedy."""
  denoise = table_denoiser(4, 3)
  params = genmd4.params_from_exponents(jnp.array(UNEQUAL[0]))
  x_init = jnp.full((256, 3), V, jnp.int32)
  run = lambda key, temperature, top_p: genmd4.sample(
      denoise, key, x_init, 4, params, temperature=temperature, top_p=top_p)
  traced = jax.jit(run)
  key = jax.random.key(6)
  for temperature, top_p in [(0.7, 0.6), (0.0, 0.6), (1.0, 1.0)]:
    want = jax.jit(lambda k: run(k, temperature, top_p))(key)
    np.testing.assert_array_equal(traced(key, temperature, top_p), want)


def test_checked_rloo_loss_raises_under_jit():
  from jax.experimental import checkify
  from vmd_jax import forward
  fn = jax.jit(forward.checked(_ENTRY_POINTS["rloo_loss"]))
  err, _ = fn(jnp.zeros((2, 6), jnp.int32).at[0, 2].set(9))
  with pytest.raises(checkify.JaxRuntimeError, match=r"x0 holds token 9 at \(0, 2\)"):
    err.throw()
  err, out = fn(jnp.zeros((2, 6), jnp.int32))
  assert err.get() is None and np.all(np.isfinite(out))
