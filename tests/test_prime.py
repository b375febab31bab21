"""MDM-Prime (partial masking): the code, the NELBO against exact answers, the sampler."""

import functools
import importlib.util
import itertools
import math
import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact, md4, prime
from vmd_jax.sampling import ORDERS
from vmd_jax.schedules import get_schedule, time_grid

LINEAR0 = get_schedule("linear", eps=0.0)
# The tests' own compiles skip LLVM's slow optimisations: about half the compile
# time, the same results to float tolerance; compiles dominate this file's time.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                   "xla_llvm_disable_expensive_passes": True})


def sparse_joint(vocab_size, length, seed):
  """A Dirichlet joint over V^N with about a quarter of the sequences at zero."""
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(vocab_size**length, 0.7))
  p[rng.random(p.shape) < 0.25] = 0.0
  return p / p.sum()


def random_denoiser(code, length, seed, time_dependent=True):
  """Logits from a random linear map of the one-hot digits (plus t if asked)."""
  rng = np.random.default_rng(seed)
  width = length * code.num_digits * (code.base + 1)
  w = jnp.asarray(rng.normal(size=(width, length * code.vocab_size)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(length * code.vocab_size,)), jnp.float32)

  def denoise(x_t, t):
    h = jax.nn.one_hot(x_t, code.base + 1).reshape(x_t.shape[0], -1)
    logits = h @ w + (3.0 * t[:, None] * c if time_dependent else 0.0)
    return logits.reshape(x_t.shape[0], length, code.vocab_size)

  return denoise


def marginal_denoiser(p, vocab_size, length):
  """Ignores x_t: each position's marginal under p (the product of marginals)."""
  table = p.reshape((vocab_size,) * length)
  logs = [np.log(np.maximum(table.sum(axis=tuple(a for a in range(length) if a != n)), 1e-30))
          for n in range(length)]
  logits = jnp.asarray(np.stack(logs), jnp.float32)
  return lambda x_t, t: jnp.broadcast_to(logits, (x_t.shape[0],) + logits.shape)


# ----------------------------------------------------------------------------
# The code.


def test_base_is_the_exact_integer_root():
  cases = {(27, 1): 27, (27, 3): 3, (28, 3): 4, (8, 3): 2, (9, 3): 3, (2, 5): 2,
           (50257, 2): 225, (50257, 4): 15, (10**12, 2): 10**6, (10**12 + 1, 2): 10**6 + 1,
           (3**20, 20): 3, (3**20 + 1, 20): 4}
  for (v, l), b in cases.items():
    assert prime.digit_base(v, l) == b, (v, l)
  with pytest.raises(ValueError, match="num_digits"):
    prime.DigitCode(5, 0)
  assert prime.DigitCode(2, 30).num_codes == 2**30
  with pytest.raises(ValueError, match=r"31 digits in base 2 make 2\^31 codes, more than int32"):
    prime.DigitCode(2, 31)


def test_packing_refuses_codes_beyond_int32():
  """``pack`` reads digits and the mask in base b + 1: (b+1)^l must fit int32, or
  the block sampler would show the network other digits (3^20 > 2^31)."""
  fits = prime.DigitCode(2**19, 19)  # 3^19 < 2^31
  d = jnp.asarray([[fits.mask_id, 1] * 9 + [0]])
  np.testing.assert_array_equal(fits.unpack(fits.pack(d)), d)
  code = prime.DigitCode(2**20, 20)  # b^l = 2^20 codes fit; 3^20 packed ones do not
  with pytest.raises(ValueError, match=r"20 digits in base 2 and the digit mask make 3\^20 "
                                       "packed codes, more than int32 holds"):
    code.pack(jnp.zeros((1, 20), jnp.int32))
  from vmd_jax.networks import Denoiser, MaskedDiffusion
  denoiser = Denoiser(vocab_size=2**20, width=8, depth=1, num_heads=1, prime_digits=20)
  with pytest.raises(ValueError, match="packed codes"):
    MaskedDiffusion(denoiser, get_schedule("linear"), block_size=2)
  MaskedDiffusion(denoiser, get_schedule("linear"))  # one block packs nothing


@pytest.mark.parametrize("order", ["ancestral", "first_hitting", "top_prob"])
def test_tokens_of_probability_zero_never_send_mass_to_inconsistent_tokens(order):
  """When the network gives every token consistent with the revealed digits
  probability 0 (a -inf logit), the restricted distribution stays on them (evenly),
  never on the excluded tokens: no sample leaves [0, V) or changes a given digit."""
  code = prime.DigitCode(5, 2)  # base 3: tokens 3 = (1, 0) and 4 = (1, 1) start with 1
  row = jnp.array([0.0, 0.0, 0.0, -jnp.inf, -jnp.inf])
  fn = lambda x_t, t: jnp.broadcast_to(row, x_t.shape[:2] + (5,))
  x_t = jnp.tile(jnp.array([[[1, code.mask_id]]]), (400, 1, 1))
  probs = np.exp(np.asarray(prime.token_log_probs(fn(x_t, None), x_t, code))[0, 0])
  np.testing.assert_allclose(probs, [0, 0, 0, 0.5, 0.5], atol=1e-3)  # float32 at 1e4
  d = prime.sample(fn, jax.random.key(0), x_t, 2, get_schedule("linear"), code, order)
  tokens = np.asarray(code.from_digits(d))[:, 0]
  assert set(np.unique(tokens)) <= {3, 4}, np.unique(tokens, return_counts=True)


@pytest.mark.parametrize("v,l", [(5, 1), (6, 3), (27, 4), (50257, 2)])
def test_code_round_trips_and_never_makes_invalid_codes(v, l):
  code = prime.DigitCode(v, l)
  x = jnp.arange(v, dtype=jnp.int32).reshape(1, v)
  d = code.to_digits(x)
  chex.assert_shape(d, (1, v, l))
  chex.assert_type(d, jnp.int32)
  assert int(d.min()) >= 0 and int(d.max()) < code.base
  np.testing.assert_array_equal(code.from_digits(d), x)
  # Big-endian: lexicographic order of digits is the order of tokens.
  flat = np.asarray(d[0])
  assert [tuple(r) for r in flat] == sorted(tuple(r) for r in flat)
  if code.num_codes > v:  # some codes are invalid; they decode to >= V
    bad = code.to_digits(jnp.int32(v))  # the first invalid code's digits
    assert int(code.from_digits(bad)) == v and not bool(code.consistent_tokens(bad).any())


@pytest.mark.parametrize("v,l", [(6, 3), (27, 4), (11, 3)])
def test_consistent_tokens_and_their_count(v, l):
  code = prime.DigitCode(v, l)
  rng = np.random.default_rng(0)
  d = np.asarray(code.to_digits(jnp.asarray(rng.integers(0, v, 64), jnp.int32)))
  revealed = rng.random((64, l)) < 0.5
  x_t = np.where(revealed, d, code.mask_id)
  table = np.asarray(code.to_digits(jnp.arange(v)))
  brute = np.all((x_t[:, None] == code.mask_id) | (x_t[:, None] == table[None]), axis=-1)
  np.testing.assert_array_equal(code.consistent_tokens(jnp.asarray(x_t)), brute)
  np.testing.assert_array_equal(code.count_consistent(jnp.asarray(d), revealed), brute.sum(-1))


def test_mask_digits_follows_the_noise():
  code = prime.DigitCode(6, 3)
  d0 = code.to_digits(jnp.array([[1, 5], [4, 0]], jnp.int32))
  sched = get_schedule("linear")
  noise = jnp.array([[[0.1, 0.9, 0.5], [0.0, 0.99, 0.3]], [[0.5, 0.2, 0.8], [0.7, 0.1, 0.6]]])
  t = jnp.array([0.45, 0.25])
  xt = prime.mask_digits(d0, t, sched, code, noise=noise)
  alpha = np.asarray(sched.alpha(t))[:, None, None]
  np.testing.assert_array_equal(xt, np.where(np.asarray(noise) >= alpha, code.mask_id, d0))
  xt = prime.mask_digits(d0, t, sched, code, key=jax.random.key(0))
  chex.assert_shape(xt, d0.shape)
  with pytest.raises(ValueError, match="key or explicit noise"):
    prime.mask_digits(d0, t, sched, code)


def test_token_and_digit_predictions_renormalise_over_consistent_tokens():
  code = prime.DigitCode(11, 3)  # b = 3, codes 11..26 invalid
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 5, 11)), jnp.float32)
  d = np.asarray(code.to_digits(jnp.asarray(rng.integers(0, 11, (4, 5)), jnp.int32)))
  x_t = jnp.asarray(np.where(rng.random((4, 5, 3)) < 0.5, d, code.mask_id))
  tok = np.exp(np.asarray(jit(prime.token_log_probs, static_argnums=2)(logits, x_t, code),
                         np.float64))
  ok = np.asarray(code.consistent_tokens(x_t))
  want = np.where(ok, np.exp(np.asarray(logits, np.float64)), 0.0)
  want /= want.sum(-1, keepdims=True)
  np.testing.assert_allclose(tok, want, atol=1e-6)
  dig = np.exp(np.asarray(jit(prime.digit_log_probs, static_argnums=2)(logits, x_t, code),
                         np.float64))
  chex.assert_shape(dig, (4, 5, 3, 3))
  table = np.asarray(code.to_digits(jnp.arange(11)))
  for k in range(3):
    brute = np.stack([(want * (table[:, k] == j)).sum(-1) for j in range(3)], -1)
    np.testing.assert_allclose(dig[:, :, k], brute, atol=1e-6)


# ----------------------------------------------------------------------------
# The NELBO against exact answers.


@pytest.mark.parametrize("v,n,l,schedule,quad", [
    (5, 2, 3, "linear", 4), (5, 3, 2, "linear", 4), (6, 2, 2, "cosine", 48)])
def test_exact_denoiser_gives_the_exact_nll(v, n, l, schedule, quad):
  code = prime.DigitCode(v, l)
  p = sparse_joint(v, n, seed=v + n + l)
  sched = get_schedule(schedule, eps=0.0)
  support = exact.all_sequences(v, n)[p > 0]
  denoise = prime.exact_digit_denoiser(p, code, n)
  nelbo = prime.expected_nelbo(denoise, support, sched, code, num_quadrature=quad)
  np.testing.assert_allclose(nelbo, -np.log(p[p > 0]), atol=2e-4)


def test_one_digit_is_md4():
  v, n = 5, 2
  code = prime.DigitCode(v, 1)
  p = sparse_joint(v, n, seed=3)
  denoise_tokens = exact.exact_denoiser(p, v, n)
  denoise_digits = prime.exact_digit_denoiser(p, code, n)
  x0 = jnp.asarray(exact.all_sequences(v, n)[p > 0])
  rng = np.random.default_rng(0)
  t = jnp.asarray(rng.random(len(x0)), jnp.float32)
  noise = jnp.asarray(rng.random(x0.shape), jnp.float32)
  sched = get_schedule("cosine")  # eps > 0: the boundary terms agree too
  both = jit(lambda t, u: [(
      md4.nelbo_terms(denoise_tokens, x0, None, sched, vocab_size=v, t=t, noise=u,
                      num_steps=steps),
      prime.nelbo_terms(denoise_digits, x0, None, sched, code, t=t, noise=u[..., None],
                        num_steps=steps)) for steps in (None, 4)])
  for a, b in both(t, noise):
    for name in ("nelbo", "diffusion", "reconstruction", "prior", "per_token", "t"):
      np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5, err_msg=name)
  # Expectations too, on the same quadrature.
  ours = prime.expected_nelbo(denoise_digits, x0, LINEAR0, code, rule="midpoint",
                              num_quadrature=20)
  reference = exact.expected_nelbo(denoise_tokens, x0, LINEAR0, v, num_quadrature=20)
  np.testing.assert_allclose(ours, reference, rtol=1e-5)


@pytest.mark.parametrize("l,eps,steps", [(3, 1e-2, None)])
def test_any_denoiser_bounds_the_entropy(l, eps, steps):
  v, n = 5, 2
  code = prime.DigitCode(v, l)
  p = sparse_joint(v, n, seed=7)
  support = exact.all_sequences(v, n)[p > 0]
  sched = get_schedule("linear", eps=eps)
  zero = lambda x_t, t: jnp.zeros(x_t.shape[:2] + (v,))
  denoisers = {"random": random_denoiser(code, n, seed=l), "zero": zero,
               "marginals": marginal_denoiser(p, v, n)}
  h = exact.entropy(p)
  for name, fn in denoisers.items():
    nelbo = prime.expected_nelbo(fn, support, sched, code, num_steps=steps, num_quadrature=4)
    mean = float(np.dot(p[p > 0], nelbo))
    assert mean >= h - 1e-4, (name, mean, h)
    if name == "zero":  # telescopes to log V per token, with the boundary terms
      np.testing.assert_allclose(nelbo, n * math.log(v), rtol=1e-5)
    assert mean > h + 0.05, (name, mean, h)  # and the gap is real


def _any_order_likelihood(denoise, code, length, x0):
  """E over the (N l)! digit orders of prod_j p(d_sigma(j) | d_sigma(<j)), brute force
  in NumPy: the continuous-time model of a t-independent denoiser."""
  v, b, l = code.vocab_size, code.base, code.num_digits
  table = np.asarray(code.to_digits(jnp.arange(v)))  # [V, l]
  digits = np.asarray(code.to_digits(jnp.asarray(x0)))  # [S, N, l]
  k = length * l
  orders = list(itertools.permutations(range(k)))
  states = np.full((len(x0), len(orders), k, length * l), b, np.int32)
  for o, order in enumerate(orders):
    for j in range(1, k):
      idx = list(order[:j])
      states[:, o, j, idx] = digits.reshape(len(x0), -1)[:, idx]
  flat = states.reshape(-1, length, l)
  logits = np.asarray(denoise(jnp.asarray(flat), jnp.zeros(len(flat))), np.float64)
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  ok = np.all((flat[:, :, None] == b) | (flat[:, :, None] == table[None, None]), axis=-1)
  probs = np.where(ok, probs, 0.0)
  probs = (probs / probs.sum(-1, keepdims=True)).reshape(len(x0), len(orders), k, length, v)
  lik = np.ones((len(x0), len(orders)))
  nll = np.zeros((len(x0), len(orders)))
  for o, order in enumerate(orders):
    for j, digit in enumerate(order):
      pos, kk = divmod(digit, l)
      hit = table[None, :, kk] == digits[:, pos, kk][:, None]  # [S, V]
      cond = np.sum(probs[:, o, j, pos] * hit, axis=-1)
      lik[:, o] *= cond
      nll[:, o] -= np.log(cond)
  return lik.mean(-1), nll.mean(-1)


def test_a_time_independent_denoiser_is_an_any_order_model_over_valid_codes():
  """The continuous NELBO of a t-independent denoiser is the any-order NLL over the
  digits, and that model puts all its mass on valid codes: it is a bound on a
  normalised distribution over V^N."""
  v, n, l = 5, 2, 2  # b = 3: 4 of the 9 codes invalid
  code = prime.DigitCode(v, l)
  denoise = random_denoiser(code, n, seed=5, time_dependent=False)
  x0 = exact.all_sequences(v, n)
  lik, nll = _any_order_likelihood(denoise, code, n, x0)
  np.testing.assert_allclose(lik.sum(), 1.0, atol=1e-5)  # no mass on invalid codes
  nelbo = prime.expected_nelbo(denoise, x0, LINEAR0, code, num_quadrature=4)
  np.testing.assert_allclose(nelbo, nll, rtol=1e-5, atol=1e-5)
  assert np.all(nelbo >= -np.log(lik) - 1e-5)


@pytest.mark.parametrize("steps", [None, 4])
def test_monte_carlo_agrees_with_the_exact_expectation(steps):
  v, n, l = 6, 2, 2
  code = prime.DigitCode(v, l)
  denoise = random_denoiser(code, n, seed=2)
  sched = get_schedule("cosine")
  x0 = np.array([3, 5], np.int32)
  want = prime.expected_nelbo(denoise, x0, sched, code, num_steps=steps, num_quadrature=48)
  batch = 4096
  fn = jit(lambda k: prime.nelbo(denoise, jnp.tile(x0, (batch, 1)), k, sched, code,
                                 num_steps=steps))
  draws = np.concatenate([np.asarray(fn(jax.random.key(i))) for i in range(4)])
  # Stratified t makes draws within a batch dependent; batches are independent.
  batch_means = draws.reshape(4, batch).mean(-1)
  se = max(np.std(draws) / math.sqrt(len(draws)), batch_means.std(ddof=1) / 2.0)
  assert abs(draws.mean() - want) < 4 * se + 1e-3, (draws.mean(), want, se)


def test_nelbo_shapes_dtypes_and_jit():
  code = prime.DigitCode(27, 2)
  x0 = jax.random.randint(jax.random.key(0), (3, 7), 0, 27)
  denoise = lambda x_t, t: jnp.zeros(x_t.shape[:2] + (27,), jnp.bfloat16)
  sched = get_schedule("cosine")

  def everything(key):
    outs = [prime.nelbo_terms(denoise, x0, key, sched, code, num_steps=steps)
            for steps in (None, 5)]
    grads = jax.grad(lambda w: prime.nelbo(
        lambda x_t, t: jnp.broadcast_to(w, x_t.shape[:2] + (27,)), x0, key, sched,
        code).mean())(jnp.zeros(27))
    return outs, grads

  outs, grads = jit(everything)(jax.random.key(1))
  for out in outs:
    for name in ("nelbo", "diffusion", "reconstruction", "prior", "t"):
      chex.assert_shape(out[name], (3,))
      chex.assert_type(out[name], jnp.float32)
    chex.assert_shape(out["per_token"], (3, 7))
    np.testing.assert_allclose(out["per_token"].sum(-1), out["nelbo"], rtol=1e-5)
    chex.assert_tree_all_finite(out)
  chex.assert_tree_all_finite(grads)


@pytest.mark.parametrize("name,params", [("loglinear", {}), ("linear", {"eps": 0.0})])
def test_nelbo_and_gradient_are_finite_at_t_zero(name, params):
  # alpha(0) = 1: at t = 0 the weight is inf and no digit is masked.
  schedule = get_schedule(name, **params)
  code = prime.DigitCode(4, 2)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
  x0 = jnp.array([[0, 1, 3], [3, 2, 0]])

  def terms(theta, rows):
    rows = np.array(rows)
    denoise = lambda x_t, t: jnp.broadcast_to(theta * logits, x_t.shape[:2] + (4,))
    return prime.nelbo_terms(denoise, x0[rows], None, schedule, code,
                             t=jnp.array([0.0, 0.5])[rows],
                             noise=jnp.full((len(rows), 3, 2), 0.9))

  both, alone = terms(0.7, [0, 1]), terms(0.7, [1])
  assert float(both["diffusion"][0]) == 0.0
  np.testing.assert_allclose(both["reconstruction"][0], 0.0, atol=1e-6)
  np.testing.assert_allclose(both["nelbo"][0], both["prior"][0], rtol=1e-6)
  np.testing.assert_allclose(both["nelbo"][1:], alone["nelbo"], rtol=1e-6)
  grad = jax.grad(lambda theta: jnp.sum(terms(theta, [0, 1])["nelbo"]))(0.7)
  grad_alone = jax.grad(lambda theta: jnp.sum(terms(theta, [1])["nelbo"]))(0.7)
  assert float(jnp.abs(grad_alone)) > 0.01
  np.testing.assert_allclose(grad, grad_alone, rtol=1e-5)


# ----------------------------------------------------------------------------
# The sampler.

V, N, L, S = 5, 2, 2, 20000
CODE = prime.DigitCode(V, L)  # b = 3: codes 5..8 invalid


@pytest.fixture(scope="module")
def joint():
  p = sparse_joint(V, N, seed=21)
  return p, prime.exact_digit_denoiser(p, CODE, N)


@functools.partial(jit, static_argnums=(0, 3, 4), static_argnames=(
    "schedule", "unit", "temperature", "top_p", "skip_idle"))
def _sample(denoise, key, x_init, order, num_steps, schedule="linear", **kw):
  return prime.sample(denoise, key, x_init, num_steps, get_schedule(schedule, eps=0.0), CODE,
                      order=order, return_nfe=True, return_idle=True, **kw)


def draw(denoise, order, num_steps, x_init=None, key=0, **kw):
  """(digits, nfe, idle); every test's draws share one compiled sampler per
  (denoiser, order, steps, options, x_init shape)."""
  if x_init is None:
    x_init = jnp.full((S, N, L), CODE.mask_id, jnp.int32)
  return _sample(denoise, jax.random.key(key), x_init, order, num_steps, **kw)


def assert_valid(d):
  assert int(jnp.sum(d == CODE.mask_id)) == 0
  assert int(jnp.max(CODE.from_digits(d))) < V


def ancestral_chain(denoise, num_steps, schedule, grid="linear"):
  """The exact output distribution [V^N] of the T-step ancestral sampler, by
  propagating a distribution over all (b+1)^(N l) digit states in NumPy: each
  masked digit revealed with probability r, the revealed digits of a position
  taken from ONE token of its renormalised distribution. Asserts that no invalid
  code ever gets probability."""
  b, k = CODE.base, N * L
  states = exact.all_sequences(b + 1, k).reshape(-1, N, L)  # digit b = mask
  powers = (b + 1) ** np.arange(k - 1, -1, -1)
  table = np.asarray(CODE.to_digits(jnp.arange(V)))
  ok = np.all((states[:, :, None] == b) | (states[:, :, None] == table[None, None]), -1)
  masked = states == b
  subsets = exact.all_sequences(2, k).astype(bool).reshape(-1, N, L)  # R, [16, N, L]
  toks = exact.all_sequences(V, N)  # one token per position, [25, N]
  # The state after revealing digits R of state s with tokens toks: [R, S, 25].
  y = np.where(subsets[:, None, None], table[toks][None, None], states[None, :, None])
  target = np.sum(y.reshape(y.shape[:3] + (k,)) * powers, axis=-1)
  inside = ~np.any(subsets[:, None] & ~masked[None], axis=(2, 3))  # R within the masks
  sizes = subsets.sum((1, 2))[:, None]
  times = np.asarray(time_grid(num_steps, grid), np.float64)
  dist = np.zeros(len(states))
  dist[-1] = 1.0  # all masked
  for i in range(num_steps):
    logits = np.asarray(denoise(jnp.asarray(states), jnp.full(len(states), times[i],
                                                              jnp.float32)), np.float64)
    probs = np.where(ok, np.exp(logits - logits.max(-1, keepdims=True)), 0.0)
    probs /= np.maximum(probs.sum(-1, keepdims=True), 1e-300)  # [S, N, V]
    a_t, a_s = (float(schedule.alpha(times[j])) for j in (i, i + 1))
    r = 1.0 if i == num_steps - 1 else (a_s - a_t) / (1.0 - a_t)
    left = np.maximum(masked.sum((1, 2))[None] - sizes, 0)
    w = np.where(inside, r**sizes * (1.0 - r) ** left, 0.0)  # P(R | s), [R, S]
    per_pos = probs[:, np.arange(N)[None], toks]  # [S, 25, N]
    any_r = subsets.any(-1)[:, None, None]  # [R, 1, 1, N]
    pv = np.prod(np.where(any_r, per_pos[None], (toks == 0)[None, None]), axis=-1)
    mass = dist[None, :, None] * w[:, :, None] * pv
    dist = np.bincount(target.ravel(), weights=mass.ravel(), minlength=len(states))
  done = ~masked.any((1, 2))
  invalid = done & ~ok.any(-1).all(-1)
  assert dist[invalid].sum() == 0.0  # no invalid code is ever produced
  done &= ~invalid
  out = np.zeros(V**N)
  tokens = np.asarray(CODE.from_digits(jnp.asarray(states[done])))
  np.add.at(out, exact.sequence_index(tokens, V), dist[done])
  return out


def test_first_hitting_samples_the_joint(joint):
  p, denoise = joint
  d, nfe, idle = draw(denoise, "first_hitting", 0)
  assert not np.any(idle)  # first hitting reveals a digit at every step
  chex.assert_shape(d, (S, N, L))
  chex.assert_type(d, jnp.int32)
  assert_valid(d)
  tv = exact.total_variation(exact.empirical_distribution(CODE.from_digits(d), V), p)
  assert tv < 0.02, tv
  assert int(nfe) == N * L  # one digit per call


def test_ancestral_sampler_draws_its_exact_chain_which_tends_to_the_joint(joint):
  """Sampling the T = 1000 chain directly costs minutes on two cores, so: the sampler
  matches the exact T-step chain (joint reveals and all) at T = 3, and that chain
  goes to the joint as T grows."""
  p, denoise = joint
  sched = get_schedule("linear", eps=0.0)
  chain3 = ancestral_chain(denoise, 3, sched)
  np.testing.assert_allclose(chain3.sum(), 1.0, atol=1e-6)  # no invalid codes
  assert exact.total_variation(chain3, p) > 0.05  # T = 3 is visibly not exact
  d, _, _ = draw(denoise, "ancestral", 3)
  assert_valid(d)
  tv = exact.total_variation(exact.empirical_distribution(CODE.from_digits(d), V), chain3)
  assert tv < 0.02, tv
  tvs = [exact.total_variation(ancestral_chain(denoise, t, sched), p) for t in (3, 12, 48)]
  assert tvs[0] > tvs[1] > tvs[2] and tvs[2] < 0.25 * tvs[0], tvs


def test_t_step_nelbo_bounds_the_t_step_sampler(joint):
  """At eps = 0 the T-step NELBO is a bound on -log p_T(x_0), p_T the ancestral
  sampler's own output distribution, for any denoiser."""
  p, exact_fn = joint
  sched = get_schedule("linear", eps=0.0)
  x0 = exact.all_sequences(V, N)
  for denoise in (exact_fn, random_denoiser(CODE, N, seed=9)):
    for steps in (3,):
      p_t = ancestral_chain(denoise, steps, sched)
      nelbo = prime.expected_nelbo(denoise, x0, sched, CODE, num_steps=steps)
      support = p_t > 0
      assert np.all(nelbo[support] >= -np.log(p_t[support]) - 1e-4)
      assert np.all(nelbo[p > 0] < 60.0)


def test_one_step_draws_each_token_from_its_marginal(joint):
  """Ancestral with T = 1 reveals every digit of a position jointly from one token:
  the product of the token marginals, and still no invalid code."""
  p, denoise = joint
  marginals = exact.product_of_marginals(p, V, N)
  d, nfe, _ = draw(denoise, "ancestral", 1)
  assert int(nfe) == 1
  assert_valid(d)
  tv = exact.total_variation(exact.empirical_distribution(CODE.from_digits(d), V), marginals)
  assert tv < 0.02, tv


# (order, unit, steps, top_p): every order, both units; the runs are shared with
# the NFE test and the exact-chain test.
SAMPLER_CASES = [("first_hitting", "token", 0, None), ("ancestral", "token", 3, None),
                 ("top_prob", "token", N, None), ("top_prob_margin", "token", N, None),
                 ("top_prob_margin", "digit", N * L, None), ("random", "digit", N * L, 0.5)]
assert {c[0] for c in SAMPLER_CASES} == set(ORDERS)


@pytest.mark.parametrize("order,unit,steps,top_p", SAMPLER_CASES)
def test_givens_never_change_and_codes_stay_valid(joint, order, unit, steps, top_p):
  p, denoise = joint
  given = CODE.to_digits(jnp.int32(3))  # position 1 fully given: token 3
  first = CODE.to_digits(jnp.int32(4))[0]  # position 0: first digit given (1: tokens 3, 4)
  x_init = jnp.array([[[first, CODE.mask_id], list(given)]], jnp.int32)
  x_init = jnp.tile(x_init, (S, 1, 1))  # top-p keeps codes valid too
  d, _, _ = draw(denoise, order, steps, x_init=x_init, unit=unit, key=4, top_p=top_p)
  np.testing.assert_array_equal(d[:, 1], jnp.broadcast_to(given, (S, L)))
  assert bool(jnp.all(d[:, 0, 0] == first))
  assert_valid(d)
  assert set(np.unique(CODE.from_digits(d[:, 0])).tolist()) <= {3, 4}


def test_first_hitting_draws_the_conditional_given_partial_digits(joint):
  p, denoise = joint
  first = CODE.to_digits(jnp.int32(4))[0]  # tokens 3 and 4 have first digit 1
  x_init = jnp.tile(jnp.array([[[first, CODE.mask_id], [CODE.mask_id] * L]], jnp.int32),
                    (S, 1, 1))
  d, nfe, _ = draw(denoise, "first_hitting", 0, x_init=x_init, key=5)
  assert int(nfe) == 3
  cond = p.reshape(V, V).copy()
  cond[[0, 1, 2]] = 0.0
  cond /= cond.sum()
  emp = exact.empirical_distribution(CODE.from_digits(d), V)
  assert exact.total_variation(emp, cond.ravel()) < 0.02


@pytest.mark.parametrize("unit,orders", [("token", ("top_prob", "random")),
                                         ("digit", ("top_prob_margin",))])
def test_confidence_step_reveals_the_scheduled_count(unit, orders):
  code = prime.DigitCode(27, 3)
  rng = np.random.default_rng(0)
  b, n = 6, 10
  d0 = np.asarray(code.to_digits(jnp.asarray(rng.integers(0, 27, (b, n)), jnp.int32)))
  x = jnp.asarray(np.where(rng.random((b, n, 3)) < 0.6, code.mask_id, d0))
  logits = jnp.asarray(rng.normal(size=(b, n, 27)), jnp.float32)
  step = jit(lambda a_t, a_s, last, order: prime.reveal_step(
      jax.random.key(1), x, logits, code, order, alpha_t=a_t, alpha_s=a_s, last=last,
      unit=unit), static_argnums=3)
  masked = np.asarray(x == code.mask_id)
  units = masked.any(-1) if unit == "token" else masked.reshape(b, -1)
  m = units.sum(-1)
  for order in orders:
    for a_t, a_s, last in [(0.0, 0.3, False), (0.2, 0.5, False), (0.1, 0.9, False),
                           (0.5, 0.9, True)]:
      y = step(a_t, a_s, last, order)
      keep = 0 if last else np.floor(m * (1 - a_s) / (1 - a_t) + 1e-6).astype(int)
      now = np.asarray(y == code.mask_id)
      left = now.any(-1) if unit == "token" else now.reshape(b, -1)
      np.testing.assert_array_equal(left.sum(-1), keep)
      if unit == "token":  # a token is revealed whole or left as it was
        assert np.all(~now.any(-1) | (now == masked).all(-1))
      np.testing.assert_array_equal(np.asarray(y)[~masked], np.asarray(x)[~masked])
      assert int(jnp.max(code.from_digits(jnp.where(y == code.mask_id, 0, y)))) < 27


def test_confidence_orders_rank_by_confidence():
  """top_prob reveals the position whose renormalised distribution is sharpest."""
  code = prime.DigitCode(9, 2)
  x = jnp.full((1, 3, 2), code.mask_id, jnp.int32)
  logits = jnp.stack([jnp.zeros(9), jnp.zeros(9).at[4].set(8.0), jnp.zeros(9).at[2].set(2.0)])
  y = jit(lambda: prime.reveal_step(
      jax.random.key(0), x, logits[None], code, "top_prob", alpha_t=0.0, alpha_s=1.0 / 3.0,
      unit="token", temperature=0.0))()
  np.testing.assert_array_equal(y[0, 1], code.to_digits(jnp.int32(4)))
  assert bool(jnp.all(y[0, [0, 2]] == code.mask_id))


def test_nfe_and_idle_counts(joint):
  _, denoise = joint
  sched = get_schedule("linear")
  one = jnp.full((1, N, L), CODE.mask_id, jnp.int32)
  run = jit(lambda k: [prime.sample(denoise, k, one, 200, sched, CODE, skip_idle=reuse,
                                    return_nfe=True, return_idle=True)
                       for reuse in (True, False)])
  for seed in range(4):
    (d_a, nfe_a, idle_a), (d_b, nfe_b, idle_b) = run(jax.random.key(seed))
    np.testing.assert_array_equal(d_a, d_b)
    assert int(nfe_b) == 200 and int(idle_a[0]) == int(idle_b[0]) >= 200 - N * L
    # A call first and after every step that revealed something and left masks.
    assert int(nfe_a) == 200 - int(idle_a[0])
  # One token per step (token unit, N steps) or one digit per step (digit unit).
  for order, unit, steps, top_p in SAMPLER_CASES[2:]:
    _, nfe, idle = draw(denoise, order, steps, unit=unit, top_p=top_p)
    assert int(nfe) == steps and not np.any(idle), (order, unit)
  _, nfe, _ = draw(denoise, "top_prob", N, x_init=jnp.zeros((S, N, L), jnp.int32),
                   unit="token")
  assert int(nfe) == 0  # nothing to generate: no call


@pytest.mark.parametrize("steps,length", [(64, 8), (256, 16)])
def test_confidence_orders_reveal_at_every_step_under_the_cosine_schedule(steps, length):
  """Cosine schedule and grid, where float32 rounds the first steps' ratio
  (1 - alpha(t_1)) / (1 - alpha(t_0)) to 1 and the plain floor revealed nothing
  there: one token per step at t_0 .. t_{m-1} (a denoiser whose value is its
  call's grid step records them), m calls; the digit unit also reveals one digit
  at the first step."""
  code = prime.DigitCode(steps + 1, 2)
  sched = get_schedule("cosine")
  times = time_grid(steps, "cosine")
  def recorder(x_t, t):
    step = jnp.argmin(jnp.abs(times[None, :] - t[:, None]), axis=1)
    return jnp.broadcast_to(10.0 * jax.nn.one_hot(step, steps + 1)[:, None],
                            x_t.shape[:2] + (steps + 1,))
  x_init = jnp.full((2, length, 2), code.mask_id, jnp.int32)
  for skip in (True, False):
    d, nfe = jit(lambda k: prime.sample(recorder, k, x_init, steps, sched, code, "top_prob",
                                        grid="cosine", temperature=0.0, skip_idle=skip,
                                        return_nfe=True))(jax.random.key(0))
    assert int(nfe) == (length if skip else steps)
    for row in np.asarray(code.from_digits(d)):
      np.testing.assert_array_equal(np.sort(row), np.arange(length))
  logits = jnp.zeros((2, length, steps + 1))
  for unit in ("token", "digit"):
    y = prime.reveal_step(jax.random.key(1), x_init, logits, code, "random",
                          alpha_t=sched.alpha(times[0]), alpha_s=sched.alpha(times[1]),
                          unit=unit)
    revealed = np.asarray(y != code.mask_id)
    revealed = revealed.any(-1) if unit == "token" else revealed.reshape(2, -1)
    np.testing.assert_array_equal(revealed.sum(-1), [1, 1])


@pytest.mark.parametrize("given", [False, True])
def test_skipping_steps_is_exact_for_a_time_conditioned_denoiser(given):
  """A denoiser whose logits move with t: the ancestral sampler skipping the steps
  that reveal nothing (decided before the call) draws the same digits as a call at
  every step, from the same key, for every row of a batch whose rows reveal at
  different steps; also from a partly given start. (Reusing the logits of an
  earlier t, as this sampler once did, fails here.) The confidence orders reveal
  something at every step until nothing is masked, so they have nothing to skip."""
  def moving(x_t, t):  # the preferred token swings between 0 and 4 as t moves
    ramp = jnp.linspace(-2.0, 2.0, V)
    return jnp.broadcast_to(4.0 * jnp.cos(40.0 * t)[:, None, None] * ramp,
                            x_t.shape[:2] + (V,))

  sched = get_schedule("linear")
  x_init = jnp.full((16, N, L), CODE.mask_id, jnp.int32)
  if given:  # the first digit of position 0 given as 1
    x_init = x_init.at[:, 0, 0].set(1)
  run = jit(lambda k: [prime.sample(moving, k, x_init, 300, sched, CODE, "ancestral",
                                    skip_idle=reuse, return_nfe=True)
                       for reuse in (True, False)])
  for seed in range(3):
    (skipped, nfe), (every, nfe_every) = run(jax.random.key(seed))
    np.testing.assert_array_equal(skipped, every)
    assert int(nfe_every) == 300 and int(nfe) < 100, int(nfe)
    assert len(np.unique(np.asarray(CODE.from_digits(skipped)))) > 2  # draws depend on t


def _idle_benchmark():
  """benchmarks/prime_idle_steps.py, which holds the idle-step analysis."""
  path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "prime_idle_steps.py"
  spec = importlib.util.spec_from_file_location("prime_idle_steps", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_idle_steps_match_the_closed_form():
  bench = _idle_benchmark()
  sched = get_schedule("linear")
  code = prime.DigitCode(27, 2)
  steps, length, batch = 100, 40, 32
  want = bench.expected_idle_ratio(length * 2, steps, sched)
  assert abs(want - (1 - 1 / steps) ** 80) < 0.01  # ~ exp(-N l / T)
  zero = lambda x_t, t: jnp.zeros(x_t.shape[:2] + (27,))
  x_init = jnp.full((batch, length, 2), code.mask_id, jnp.int32)
  _, idle = jit(lambda k: prime.sample(zero, k, x_init, steps, sched, code,
                                           return_idle=True))(jax.random.key(3))
  sim = jit(lambda k: bench.ancestral_idle_steps(k, 4 * batch, length * 2, steps, sched))(
      jax.random.key(4))
  for counts in (np.asarray(idle), np.asarray(sim)):
    ratio = counts / steps
    assert abs(ratio.mean() - want) < 4 * ratio.std() / math.sqrt(len(ratio)) + 1e-3
  # More digits per token, fewer idle steps.
  assert bench.expected_idle_ratio(length * 4, steps, sched) < want


def test_temperature_zero_and_bad_arguments(joint):
  p, denoise = joint
  d, _, _ = draw(denoise, "ancestral", 1, temperature=0.0, x_init=jnp.full((3, N, L), 3))
  table = p.reshape(V, V)
  mode = [np.argmax(table.sum(1)), np.argmax(table.sum(0))]
  np.testing.assert_array_equal(CODE.from_digits(d), np.tile(mode, (3, 1)))
  with pytest.raises(ValueError, match=r"unknown sampling order 'greedy'.*ancestral"):
    draw(denoise, "greedy", 2)
  with pytest.raises(ValueError, match=r"unknown reveal unit 'bit'"):
    draw(denoise, "top_prob", 2, unit="bit")
  for top_p in (0.0, float("nan")):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
      prime.sample(denoise, jax.random.key(0), jnp.full((1, N, L), 3), 2, LINEAR0, CODE,
                   top_p=top_p)
  for temperature in (-1.0, float("nan")):
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0"):
      prime.sample(denoise, jax.random.key(0), jnp.full((1, N, L), 3), 2, LINEAR0, CODE,
                   temperature=temperature)


def test_samplers_name_logits_of_the_wrong_shape():
  """A denoiser returning [B, 1, V] (used to broadcast silently) or V + 1 values:
  a one-line ValueError with both shapes, from the sampler and the block sampler
  (the network's own output checked before the block is sliced out)."""
  x_init = jnp.full((2, 4, L), CODE.mask_id, jnp.int32)
  for shape in [(2, 1, V), (2, 4, V + 1)]:
    with pytest.raises(ValueError, match=rf"denoise_fn returned logits of shape "
                                         rf"\({shape[0]}, {shape[1]}, {shape[2]}\), "
                                         rf"expected \[B, N, V\] = \(2, 4, {V}\)"):
      prime.sample(lambda x_t, t: jnp.zeros(shape), jax.random.key(0), x_init, 2, LINEAR0,
                   CODE)
  one_position = lambda x, *a, **kw: jnp.zeros((x.shape[0], 1, V))
  prefill = lambda x, *a, **kw: [(jnp.zeros(x.shape[:2] + (1,)),) * 2]
  for use_cache, expected in [(False, r"\[B, L, V\] = \(2, 4, \?\)"),
                              (True, r"\[B, L', V\] = \(2, 2, \?\)")]:
    with pytest.raises(ValueError, match=r"denoise_fn returned logits of shape \(2, 1, 5\), "
                                         r"expected " + expected):
      prime.block_sample(one_position, prefill, jax.random.key(0), x_init, 2, 1, LINEAR0,
                         CODE, use_cache=use_cache)


def test_sampler_options_have_the_names_and_defaults_of_vmd_jax_sampling(joint):
  """prime.sample and prime.block_sample take sampling.sample's options under the
  same names and defaults (prime.sample's skip_idle was called reuse_logits, and
  prime.block_sample rejected skip_idle); the block sampler passes skip_idle on."""
  import inspect
  from vmd_jax import block, sampling
  shared = ("temperature", "top_p", "grid", "skip_idle", "return_nfe")
  want = inspect.signature(sampling.sample).parameters
  for fn in (prime.sample, prime.block_sample, block.block_sample):
    params = inspect.signature(fn).parameters
    for name in shared:
      assert name in params and params[name].default == want[name].default, (fn, name)
  _, denoise = joint
  block_denoise = lambda x, t, *a, **kw: denoise(x, t[:, 0])
  x_init = jnp.full((2, N, L), CODE.mask_id, jnp.int32)
  run = jit(lambda k, skip: prime.block_sample(
      block_denoise, None, k, x_init, 1, 50, LINEAR0, CODE, use_cache=False, skip_idle=skip,
      return_nfe=True), static_argnums=1)
  (skipped, nfe), (every, nfe_every) = run(jax.random.key(2), True), run(jax.random.key(2), False)
  np.testing.assert_array_equal(skipped, every)
  assert int(nfe) <= 2 * N * L < int(nfe_every) == N * 50  # a call when a row reveals


def test_traced_temperature_and_top_p(joint):
  """temperature and top_p as jit arguments draw what the same concrete values
  draw from the same key (they used to raise TracerBoolConversionError), also in
  the block sampler; a traced temperature of 0 is exactly greedy."""
  _, denoise = joint
  x_init = jnp.full((128, N, L), CODE.mask_id, jnp.int32)
  run = lambda key, temperature, top_p: prime.sample(
      denoise, key, x_init, 2, LINEAR0, CODE, "top_prob", temperature=temperature,
      top_p=top_p)
  block_denoise = lambda x, t, *a, **kw: denoise(x, t[:, 0])
  run_blocks = lambda key, temperature, top_p: prime.block_sample(
      block_denoise, None, key, x_init, 1, 2, LINEAR0, CODE, use_cache=False,
      temperature=temperature, top_p=top_p)
  key = jax.random.key(5)
  for fn in (run, run_blocks):
    traced = jit(fn)
    for temperature, top_p in [(0.7, 0.6), (0.0, 0.6)]:
      want = jit(lambda k: fn(k, temperature, top_p))(key)
      np.testing.assert_array_equal(traced(key, temperature, top_p), want)


# ----------------------------------------------------------------------------
# Token and digit checks at the entry points.


def test_entry_points_reject_bad_tokens_and_digits():
  code = prime.DigitCode(5, 2)  # b = 3: digits (1, 2) code 5, invalid; (2, *) none valid
  zero = lambda x_t, t: jnp.zeros(x_t.shape[:2] + (5,))
  block_zero = lambda x, *a, **kw: jnp.zeros(x.shape[:2] + (5,))
  sched = get_schedule("linear")
  x0 = np.zeros((2, 4), np.int32)
  x0[1, 3] = 5
  losses_ = {"prime_nelbo_terms": lambda x: prime.nelbo_terms(
                 zero, x, jax.random.key(0), sched, code),
             "block_nelbo_terms": lambda x: prime.block_nelbo_terms(
                 block_zero, x, jax.random.key(0), sched, code, 2)}
  for fn in losses_.values():
    with pytest.raises(ValueError, match=r"x0 holds token 5 at \(1, 3\), outside \[0, 4\]"):
      fn(x0)
  samplers = {"sample": lambda x: prime.sample(zero, jax.random.key(0), x, 2, sched, code),
              "block_sample": lambda x: prime.block_sample(
                  block_zero, None, jax.random.key(0), x, 2, 1, sched, code, use_cache=False)}
  bad = {r"x_init holds digit 4 at \(0, 1, 1\), outside \[0, 3\] \(base b = 3": [0, 4],
         r"x_init position \(0, 1\) has digits \[1, 2\] \(mask 3\), which code no token < V = 5":
             [1, 2],
         r"x_init position \(0, 1\) has digits \[2, 3\] \(mask 3\), which code no token": [2, 3]}
  for fn in samplers.values():
    for message, digits in bad.items():
      x = np.full((1, 2, 2), 3, np.int32)
      x[0, 1] = digits
      with pytest.raises(ValueError, match=message):
        fn(jnp.asarray(x))
  # Under jit, forward.checked raises the same messages (one compile for all).
  from jax.experimental import checkify
  from vmd_jax import forward
  err, _ = jit(forward.checked(losses_["prime_nelbo_terms"]))(jnp.asarray(x0))
  with pytest.raises(checkify.JaxRuntimeError, match=r"x0 holds token 5 at \(1, 3\)"):
    err.throw()
  checked_sample = jit(forward.checked(samplers["sample"]))
  for message, digits in bad.items():
    x = np.full((1, 2, 2), 3, np.int32)
    x[0, 1] = digits
    err, _ = checked_sample(jnp.asarray(x))
    with pytest.raises(checkify.JaxRuntimeError, match=message.split(r" \(base")[0]):
      err.throw()
  x = np.full((1, 2, 2), 3, np.int32)
  x[0, 1] = [1, 3]  # first digit given: tokens 3 and 4 stay possible
  err, out = checked_sample(jnp.asarray(x))
  assert err.get() is None and int(code.from_digits(out)[0, 1]) in (3, 4)


@pytest.mark.parametrize("v,l,dtype", [(256, 2, np.uint8), (120, 2, np.int8),
                                       (32000, 3, np.int16)])
def test_block_sampler_shows_the_network_the_same_digits_in_any_int_dtype(v, l, dtype):
  """Digits in a small int dtype pack (base b + 1) without overflow: the block
  sampler's network sees what it sees with int32 digits, cached or not, so the
  samples are the same."""
  code = prime.DigitCode(v, l)
  seen = {}

  def denoise(x, t, positions, mask, kv_prefix=None, *, z=None):
    jax.debug.callback(lambda a: seen.setdefault("first", np.asarray(a)), x)
    # logits that depend on every input digit (masks included)
    score = jnp.sum(x * (jnp.arange(l) + 1), axis=-1, keepdims=True).astype(jnp.float32)
    return jnp.sin(score * (jnp.arange(v) + 1.0))

  prefill = lambda x, t, p, m, kv=None, *, z=None: [(jnp.zeros(x.shape[:2] + (1,)),) * 2]
  x_init = np.full((2, 4, l), code.mask_id, np.int64)
  x_init[:, 0] = np.asarray(code.to_digits(jnp.asarray([v - 1, 7])))
  for use_cache in (False, True):
    out = {}
    for dt in (np.int32, dtype):
      seen.clear()
      out[dt] = prime.block_sample(denoise, prefill, jax.random.key(0), jnp.asarray(x_init, dt),
                                   2, 2, get_schedule("linear"), code, use_cache=use_cache)
      np.testing.assert_array_equal(seen["first"][:, :2], x_init[:, :2])  # block 0, masked
    np.testing.assert_array_equal(out[dtype], out[np.int32])
