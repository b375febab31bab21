"""MD4 and VMD objectives against exact likelihoods on an enumerable joint."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact, losses, md4
from vmd_jax.schedules import get_schedule

V, N = 3, 3
SCHEDULES = [("linear", {}), ("cosine", {}), ("polynomial", {"k": 2.0}), ("loglinear", {})]


def random_joint(seed, concentration=0.5):
  return np.random.default_rng(seed).dirichlet(np.full(V**N, concentration))


@pytest.fixture(scope="module")
def joint():
  p = random_joint(0)
  return p, exact.exact_denoiser(p, V, N), exact.all_sequences(V, N)


@pytest.mark.parametrize("name,params", SCHEDULES)
def test_continuous_nelbo_equals_nll_with_exact_denoiser(joint, name, params):
  p, denoise, seqs = joint
  # eps = 0: the identity is exact (up to quadrature error).
  schedule = get_schedule(name, **{**params, "eps": 0.0})
  np.testing.assert_allclose(exact.expected_nelbo(denoise, seqs, schedule, V), -np.log(p),
                             atol=2e-5)
  # md4's eps shift: a bound on a model with uniform ends, within 2 eps N log V of p.
  schedule = get_schedule(name, **params)
  values = exact.expected_nelbo(denoise, seqs, schedule, V)
  band = 2 * schedule.eps * (N * math.log(V) - np.log(p)) + 2e-5
  assert np.all(np.abs(values + np.log(p)) <= band), values + np.log(p)
  assert float(np.dot(p, values)) >= exact.entropy(p) - 1e-5


@pytest.mark.parametrize("name,params", SCHEDULES)
def test_monte_carlo_nelbo_estimate_matches_nll(joint, name, params):
  p, denoise, seqs = joint
  schedule = get_schedule(name, **params)
  for j in [2, 17]:
    x0 = jnp.tile(jnp.asarray(seqs[j])[None], (20000, 1))
    vals = np.asarray(md4.nelbo(denoise, x0, jax.random.key(j), schedule))
    assert vals.shape == (20000,)
    se = vals.std() / math.sqrt(len(vals))
    assert abs(vals.mean() + math.log(p[j])) < 4 * se + 5e-3, (vals.mean(), -math.log(p[j]), se)


def test_discrete_nelbo_bounds_and_tightens(joint):
  p, denoise, seqs = joint
  schedule = get_schedule("linear", eps=0.0)
  h = exact.entropy(p)
  by_steps = {T: exact.expected_nelbo(denoise, seqs, schedule, V, num_steps=T)
              for T in (1, 2, 4, 16, 256)}
  # Per sequence, T = 1 is the NLL of the one-step model: the product of marginals.
  np.testing.assert_allclose(
      by_steps[1], -np.log(exact.product_of_marginals(p, V, N)), rtol=1e-5)
  # Against the data, in expectation: >= H(p), non-increasing in T, -> H(p).
  means = [float(np.dot(p, v)) for v in by_steps.values()]
  assert all(m >= h - 1e-5 for m in means), (means, h)
  assert all(a >= b - 1e-5 for a, b in zip(means, means[1:])), means
  assert means[0] - h > 0.1
  assert means[-1] - h < 0.01
  # ... and the continuous-time value is the limit.
  cont = exact.expected_nelbo(denoise, seqs, schedule, V)
  assert abs(float(np.dot(p, cont)) - h) < 1e-4
  assert means[-1] >= float(np.dot(p, cont)) - 1e-5


def test_any_other_denoiser_bounds_the_entropy(joint):
  p, _, seqs = joint
  schedule = get_schedule("cosine")
  h = exact.entropy(p)
  for seed in range(1, 4):
    q = random_joint(seed, concentration=2.0)
    wrong = exact.exact_denoiser(q, V, N)
    per_seq = exact.expected_nelbo(wrong, seqs, schedule, V, num_quadrature=400)
    # The bound holds per sequence against the model's own likelihood (here q) ...
    np.testing.assert_allclose(per_seq, -np.log(q), atol=2e-3)
    # ... and against the data in expectation: sum_x p(x) NELBO(x) >= H(p).
    assert float(np.dot(p, per_seq)) >= h + 0.01
  # A network-like denoiser: random context-dependent logits.
  w = jax.random.normal(jax.random.key(7), (N * (V + 1), N * V))
  def mlp(xt, t):
    return (jax.nn.one_hot(xt, V + 1).reshape(xt.shape[0], -1) @ w).reshape(-1, N, V)
  per_seq = exact.expected_nelbo(mlp, seqs, schedule, V, num_quadrature=400)
  assert float(np.dot(p, per_seq)) >= h


@pytest.mark.parametrize("name,params", SCHEDULES)
@pytest.mark.parametrize("num_steps", [None, 1, 7])
def test_zero_logits_give_n_log_v(name, params, num_steps):
  schedule = get_schedule(name, **params)
  zero = lambda xt, t: jnp.zeros(xt.shape + (V,))
  value = exact.expected_nelbo(zero, np.array([0, 1, 2]), schedule, V, num_steps=num_steps)
  np.testing.assert_allclose(value, N * math.log(V), rtol=2e-4)


# alpha(0) = 1: weight(0) = inf and nothing is masked at t = 0.
ALPHA0_ONE = [("loglinear", {}), ("linear", {"eps": 0.0}), ("polynomial", {"k": 0.5, "eps": 0.0})]


def check_t_zero(nelbo_fn, schedule, num_tokens, vocab_size):
  """``nelbo_fn(logits [N, V], x0 [2, N], t [2], noise [2, N]) -> [2]`` with logits
  theta * LOGITS at t = [0, 0.5], every token masked at t = 0.5: the t = 0 row is
  its boundary terms, the other -weight(0.5) sum_n log softmax(theta LOGITS)[x0^n]
  plus them, and the gradient in theta is that row's, finite."""
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(num_tokens, vocab_size)),
                       jnp.float32)
  x0 = np.arange(num_tokens) % vocab_size
  x0 = jnp.asarray(np.stack([x0, x0[::-1]]), jnp.int32)
  t, noise = jnp.array([0.0, 0.5]), jnp.full(x0.shape, 0.9)
  boundary = num_tokens * (1.0 - schedule.alpha(0.0) + schedule.alpha(1.0)) * math.log(
      vocab_size)

  def expected(theta):
    ll = jnp.take_along_axis(jax.nn.log_softmax(theta * logits), x0[1][:, None], 1)
    return -schedule.weight(0.5) * jnp.sum(ll) + boundary

  values = nelbo_fn(0.7 * logits, x0, t, noise)
  np.testing.assert_allclose(values, [boundary, expected(0.7)], rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda theta: jnp.sum(nelbo_fn(theta * logits, x0, t, noise)))(0.7)
  np.testing.assert_allclose(grad, jax.grad(expected)(0.7), rtol=1e-5)


@pytest.mark.parametrize("name,params", ALPHA0_ONE)
def test_md4_nelbo_and_gradient_are_finite_at_t_zero(name, params):
  schedule = get_schedule(name, **params)

  def nelbo(logits, x0, t, noise):
    denoise = lambda xt, tt: jnp.broadcast_to(logits, xt.shape + logits.shape[-1:])
    return md4.nelbo(denoise, x0, None, schedule, t=t, noise=noise)
  check_t_zero(nelbo, schedule, N, V)


@pytest.mark.parametrize("name,params", ALPHA0_ONE)
def test_vmd_loss_and_gradient_are_finite_at_t_zero(name, params):
  schedule = get_schedule(name, **params)
  zero_enc = lambda x0, xt, t: (jnp.zeros((x0.shape[0], 2)), jnp.zeros((x0.shape[0], 2)))

  def loss(logits, x0, t, noise):
    denoise = lambda xt, tt, z: jnp.broadcast_to(logits, xt.shape + logits.shape[-1:])
    return losses.vmd_loss(denoise, zero_enc, x0, jax.random.key(0), schedule, t=t,
                           noise=noise, beta=1.0)["loss"]
  check_t_zero(loss, schedule, N, V)


def test_md4_nelbo_as_documented():
  """The README's call: md4_nelbo(denoise_fn, x0, key, schedule) -> [B]."""
  denoise_fn = lambda xt, t: jnp.zeros(xt.shape + (27,))
  x0 = jax.random.randint(jax.random.key(0), (8, 64), 0, 27)
  out = jax.jit(lambda x, k: md4.nelbo(denoise_fn, x, k, get_schedule("linear")))(
      x0, jax.random.key(1))
  assert out.shape == (8,) and out.dtype == jnp.float32
  # Unbiased for N log V; the batch mean of 8 stratified draws is close.
  assert abs(float(out.mean()) - 64 * math.log(27)) < 0.1 * 64 * math.log(27)
  bpc = losses.bits_per_token(jnp.float32(64 * math.log(27)), 64)
  np.testing.assert_allclose(bpc, math.log2(27), rtol=1e-6)


def test_stratified_times_cover_the_unit_interval():
  t = np.sort(np.asarray(losses.stratified_times(jax.random.key(3), 10)))
  assert np.all((t > 0) & (t <= 1))
  np.testing.assert_allclose(np.diff(t), 0.1, atol=1e-6)
  t_disc, s = losses.discretize_times(jnp.array([0.0, 0.26, 0.99, 1.0]), 4)
  np.testing.assert_allclose(t_disc, [0.25, 0.5, 1.0, 1.0])
  np.testing.assert_allclose(s, [0.0, 0.25, 0.75, 0.75])


@pytest.mark.parametrize("antithetic", [True, False])
def test_drawn_times_are_never_zero_where_a_weight_is_infinite(monkeypatch, antithetic):
  """A polynomial schedule with k < 1 has an infinite weight at t = 0, where eps
  still masks a token: every drawn t lies in (0, 1], so even the uniform draw
  u = 0 (and u_0 + i / B rounding to 1) gives a finite NELBO."""
  monkeypatch.setattr(jax.random, "uniform",
                      lambda key, shape=(), *a, **k: jnp.zeros(shape, jnp.float32))
  t = losses.stratified_times(jax.random.key(0), 4) if antithetic else (
      losses.uniform_times(jax.random.key(0), (4,)))
  assert np.all((np.asarray(t) > 0) & (np.asarray(t) <= 1)), t
  schedule = get_schedule("polynomial", k=0.5)
  assert not np.isfinite(float(schedule.weight(jnp.float32(0.0))))
  x0 = jnp.zeros((4, 3), jnp.int32)
  denoise_fn = lambda xt, t: jnp.zeros(xt.shape + (2,))
  # Masked iff noise >= alpha(t): this noise masks every token at every t (alpha <= 1 - eps).
  out = md4.nelbo(denoise_fn, x0, jax.random.key(1), schedule, antithetic=antithetic,
                         noise=jnp.full(x0.shape, 0.99995))
  assert np.all(np.isfinite(np.asarray(out))), out


# ---------------------------------------------------------------------------
# VMD


def test_gaussian_kl_closed_form_and_monte_carlo():
  q = losses.DiagonalGaussian(jnp.array([[1.0, 0.0, -0.5]]), jnp.array([[0.0, math.log(4.0), -1.0]]))
  expected = 0.5 * (1.0 + 0.0) + 0.5 * (4.0 - 1 - math.log(4.0)) + 0.5 * (
      0.25 + math.exp(-1.0) - 1 + 1.0)
  np.testing.assert_allclose(q.kl_standard_normal(), [expected], rtol=1e-6)
  # Monte Carlo: E_q[log q(z) - log N(z; 0, I)].
  z = jax.vmap(q.sample)(jax.random.split(jax.random.key(0), 200000))[:, 0]
  log_q = jax.vmap(lambda zz: q.log_prob(zz[None]))(z)[:, 0]
  log_p = losses.DiagonalGaussian(jnp.zeros((1, 3)), jnp.zeros((1, 3))).log_prob(z)
  np.testing.assert_allclose(float(jnp.mean(log_q - log_p)), expected, atol=0.02)
  # Free bits: dimensions under lambda count as lambda.
  np.testing.assert_allclose(losses.free_bits_kl(q.kl_per_dim(), 0.3),
                             [np.maximum(np.asarray(q.kl_per_dim()), 0.3).sum()], rtol=1e-6)


def test_gaussian_kl_and_log_prob_in_float32_for_bfloat16_inputs():
  mean = jnp.array([[0.0, 0.0, 0.5, -2.0]], jnp.bfloat16)
  logvar = jnp.array([[0.01, -0.003, 0.0, 1.5]], jnp.bfloat16)
  q = losses.DiagonalGaussian(mean, logvar)
  m, lv = (np.asarray(a, np.float64) for a in (mean, logvar))  # the bf16 values, exactly
  kl = 0.5 * (m**2 + np.expm1(lv) - lv)
  assert q.kl_per_dim().dtype == jnp.float32 and q.kl_standard_normal().dtype == jnp.float32
  np.testing.assert_allclose(q.kl_per_dim(), kl, rtol=1e-4)
  assert float(q.kl_per_dim()[0, 0]) > 0  # bfloat16 arithmetic gives -0.0011
  z = jnp.array([[0.3, -1.0, 0.7, -2.5]], jnp.bfloat16)
  log_q = -0.5 * np.sum(np.log(2 * np.pi) + lv + (np.asarray(z, np.float64) - m)**2
                        / np.exp(lv))
  assert q.log_prob(z).dtype == jnp.float32
  np.testing.assert_allclose(q.log_prob(z), [log_q], rtol=1e-6)
  encode = lambda x0, xt, t: (jnp.broadcast_to(mean, (2, 4)), jnp.broadcast_to(logvar, (2, 4)))
  out = losses.vmd_loss(lambda xt, t, z: jnp.zeros(xt.shape + (V,)), encode,
                        jnp.zeros((2, N), jnp.int32), jax.random.key(0),
                        get_schedule("linear"), beta=1.0)
  assert out["kl"].dtype == jnp.float32
  np.testing.assert_allclose(out["kl"], [kl.sum()] * 2, rtol=1e-4)


def test_vmd_loss_terms_and_gradients():
  latent, batch = 2, 16
  key = jax.random.key(0)
  x0 = jax.random.randint(key, (batch, N), 0, V)
  params = {"enc": jax.random.normal(key, (N * V, 2 * latent)),
            "dec": jax.random.normal(jax.random.key(1), (latent, N * V))}

  def encode_fn(prm, x0, xt, t):
    h = jax.nn.one_hot(x0, V).reshape(x0.shape[0], -1) @ prm["enc"]
    return h[:, :latent], h[:, latent:]

  def denoise_fn(prm, xt, t, z):
    return (z @ prm["dec"]).reshape(-1, N, V)

  def loss(prm, beta):
    out = losses.vmd_loss(lambda *a: denoise_fn(prm, *a), lambda *a: encode_fn(prm, *a),
                          x0, jax.random.key(5), get_schedule("linear"), beta=beta)
    return out["loss"].mean(), out

  (value, out), grads = jax.value_and_grad(loss, has_aux=True)(params, 0.1)
  for k in ("loss", "nelbo", "diffusion", "reconstruction", "prior", "kl", "bound"):
    assert out[k].shape == (batch,), k
  np.testing.assert_allclose(out["loss"], out["nelbo"] + 0.1 * out["kl"], rtol=1e-5)
  np.testing.assert_allclose(out["bound"], out["nelbo"] + out["kl"], rtol=1e-5)
  assert all(bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0
             for g in jax.tree.leaves(grads))


def test_vmd_with_ignored_latent_is_md4():
  p = random_joint(3)
  denoise = exact.exact_denoiser(p, V, N)
  x0 = jnp.asarray(exact.all_sequences(V, N))
  t = jnp.linspace(0.05, 0.95, len(x0))
  noise = jax.random.uniform(jax.random.key(2), x0.shape)
  schedule = get_schedule("cosine")
  plain = md4.nelbo_terms(denoise, x0, None, schedule, t=t, noise=noise)
  zero_enc = lambda x0, xt, t: (jnp.zeros((x0.shape[0], 4)), jnp.zeros((x0.shape[0], 4)))
  vmd = losses.vmd_loss(lambda xt, t, z: denoise(xt, t), zero_enc, x0, jax.random.key(0),
                        schedule, t=t, noise=noise, beta=1.0)
  np.testing.assert_allclose(vmd["nelbo"], plain["nelbo"], rtol=1e-6)
  np.testing.assert_allclose(vmd["kl"], 0.0, atol=1e-7)


@pytest.mark.parametrize("loss", ["md4", "md4_T4", "genmd4", "prime_l1", "prime_l2",
                                  "prime_l2_T4"])
def test_a_minus_inf_logit_at_an_unmasked_position_plays_no_part(loss):
  """An unmasked token is no part of the diffusion term: a -inf logit for its own
  value there gives the same NELBO (and a finite gradient) as a logit of 0, not
  0 * inf = NaN."""
  from vmd_jax import genmd4, prime
  V, schedule = 4, get_schedule("linear")
  x0, t = jnp.array([[3, 1]]), jnp.array([0.5])
  noise = jnp.array([[0.1, 0.9]])  # masked iff noise >= alpha(0.5) ~ 0.5: only position 1
  steps = 4 if loss.endswith("T4") else None

  def nelbo(first_logit):
    row0 = jnp.zeros(V).at[3].set(first_logit)
    logits = jnp.stack([row0, jnp.array([0.0, 1.0, 2.0, 3.0])])[None]  # [1, 2, V]
    if loss.startswith("prime"):
      code = prime.DigitCode(V, int(loss[7]))
      fn = lambda x, t: jnp.broadcast_to(logits, x.shape[:2] + (V,))
      n = noise[..., None] * jnp.ones(code.num_digits)
      return prime.nelbo(fn, x0, None, schedule, code, t=t, noise=n, num_steps=steps)
    fn = lambda x, t: jnp.broadcast_to(logits, x.shape + (V,))
    if loss == "genmd4":
      return genmd4.nelbo_terms(fn, x0, None, genmd4.init_params(V), t=t, noise=noise)["nelbo"]
    return md4.nelbo(fn, x0, None, schedule, t=t, noise=noise, num_steps=steps)

  np.testing.assert_allclose(nelbo(-jnp.inf), nelbo(0.0), rtol=1e-6)
  assert np.isfinite(float(nelbo(0.0)[0]))
  grad = jax.grad(lambda a: nelbo(-jnp.inf + a)[0] + nelbo(a)[0])(0.0)
  assert np.isfinite(float(grad)), grad


def test_bytes_in_uint8_mask_to_a_wider_dtype():
  """Byte data in uint8 with V = 256: the mask id 256 does not fit uint8, so x_t
  is int32, and every loss gives what it gives on int32 tokens."""
  from vmd_jax import block, genmd4
  x0 = jnp.asarray(np.frombuffer(b"hello world!", np.uint8).reshape(2, 6))
  V, schedule, key = 256, get_schedule("linear"), jax.random.key(0)
  fn = lambda xt, t: jnp.sin(xt[..., None] * jnp.arange(1.0, V + 1.0))
  block_fn = lambda x, t, positions, mask, kv_prefix=None, *, z=None: fn(x, t)
  from vmd_jax.forward import mask_tokens
  xt = mask_tokens(x0, jnp.array([0.5, 0.9]), schedule, V, key=key)
  assert xt.dtype == jnp.int32 and int(xt.max()) == V
  for name, loss in {
      "md4": lambda x: md4.nelbo(fn, x, key, schedule),
      "block": lambda x: block.block_nelbo(block_fn, x, key, schedule, 3),
      "genmd4": lambda x: genmd4.nelbo(fn, x, key, genmd4.init_params(V))}.items():
    np.testing.assert_allclose(loss(x0), loss(x0.astype(jnp.int32)), rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_discrete_time_needs_at_least_one_step(bad):
  with pytest.raises(ValueError, match=rf"num_steps must be an int >= 1 \(None: continuous "
                                       rf"time\), got {bad!r}"):
    md4.nelbo(lambda xt, t: jnp.zeros(xt.shape + (2,)), jnp.zeros((1, 2), jnp.int32),
                     jax.random.key(0), get_schedule("linear"), num_steps=bad)
