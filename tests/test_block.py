"""Block diffusion: the mask, the block NELBO against MD4, autoregression and an
exact joint, and cached against uncached block sampling."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import block, exact, losses, md4
from vmd_jax.networks.adapters import block_denoiser_fns
from vmd_jax.networks import Denoiser
from vmd_jax.schedules import get_schedule

V, L, B = 3, 4, 3


def tiny_model(vocab=V, latent_dim=0, seed=1, scale=0.3):
  """A 2-layer Denoiser with every parameter N(0, scale^2) (no zero head), drawn
  with numpy on the traced shapes: no eager init to compile."""
  model = Denoiser(vocab_size=vocab, width=16, depth=2, num_heads=2, mlp_ratio=2.0,
                   latent_dim=latent_dim)
  z = jnp.zeros((1, latent_dim)) if latent_dim else None
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                          jnp.zeros((1,)), z)
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s.shape), s.dtype),
                        shapes)
  return model, params


def test_masks_on_a_small_case():
  # L = 4, blocks {0, 1}, {2, 3}; rows: queries [x_t ; x_0], columns: keys.
  expected = np.array([
      # noisy keys   clean keys
      [1, 1, 0, 0,   0, 0, 0, 0],  # noisy, block 0
      [1, 1, 0, 0,   0, 0, 0, 0],
      [0, 0, 1, 1,   1, 1, 0, 0],  # noisy, block 1
      [0, 0, 1, 1,   1, 1, 0, 0],
      [0, 0, 0, 0,   1, 1, 0, 0],  # clean, block 0
      [0, 0, 0, 0,   1, 1, 0, 0],
      [0, 0, 0, 0,   1, 1, 1, 1],  # clean, block 1
      [0, 0, 0, 0,   1, 1, 1, 1]], bool)
  mask = block.block_diffusion_mask(4, 2)
  chex.assert_type(mask, bool)
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(block.block_causal_mask(4, 2), expected[4:, 4:])
  np.testing.assert_array_equal(block.block_causal_mask(3, 1), np.tril(np.ones((3, 3), bool)))
  with pytest.raises(ValueError, match="divides the sequence length 4, got block_size=3"):
    block.block_diffusion_mask(4, 3)


def test_block_size_l_is_md4():
  model, params = tiny_model()
  denoise, _ = block_denoiser_fns(model, params)
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  t = jnp.asarray(rng.uniform(size=(B,)), jnp.float32)
  noise = jnp.asarray(rng.uniform(size=(B, L)), jnp.float32)
  schedule = get_schedule("cosine")
  ref = jax.jit(lambda x0, t, u: md4.nelbo_terms(
      lambda x, s: model.apply(params, x, s), x0, None, schedule, t=t, noise=u))(x0, t, noise)
  got = jax.jit(lambda x0, t, u: block.block_nelbo_terms(
      denoise, x0, None, schedule, L, t=t[:, None], noise=u))(x0, t, noise)
  assert float(jnp.max(ref["diffusion"])) > 0.1  # some tokens are masked
  for name in ("diffusion", "reconstruction", "prior", "nelbo", "per_token"):
    np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
  chex.assert_shape([got["t"], got["per_block"]], (B, 1))
  np.testing.assert_allclose(got["per_block"][:, 0], got["nelbo"], rtol=1e-6)


def test_block_size_one_is_the_autoregressive_loss():
  """L' = 1, everything masked: the diffusion term is sum_n w(t_n) CE_n with CE_n
  the cross-entropy of token n given the clean x^{<n}, computed here directly by
  running the model on (x^0, ..., x^{n-1}, m, x^{n+1}, ...) with a causal mask
  (token n sees itself, masked, and the clean tokens before it)."""
  model, params = tiny_model()
  denoise, _ = block_denoiser_fns(model, params)
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  t = jnp.asarray(rng.uniform(0.2, 1.0, size=(B, L)), jnp.float32)
  schedule = get_schedule("linear", eps=0.0)
  got = jax.jit(lambda x0, t: block.block_nelbo_terms(
      denoise, x0, None, schedule, 1, t=t, noise=jnp.full((B, L), 0.999, jnp.float32)))(x0, t)
  causal = np.tril(np.ones((L, L), bool))
  apply = jax.jit(lambda x, t_tok: model.apply(params, x, t_tok, attention_mask=causal))
  direct = np.zeros((B, L))
  for n in range(L):
    logits = apply(x0.at[:, n].set(V), jnp.zeros((B, L)).at[:, n].set(t[:, n]))
    direct[:, n] = -np.asarray(losses.token_log_likelihood(logits, x0))[:, n]
  w = np.asarray(schedule.weight(t))
  np.testing.assert_allclose(got["per_token"], w * direct, rtol=1e-5)
  np.testing.assert_allclose(got["nelbo"], np.sum(w * direct, -1), rtol=1e-5)


def exact_block_denoiser(probs, vocab, length, block_size):
  """The optimal block denoiser of a joint: for the noisy block b, the exact
  conditional of its masked tokens given the clean blocks < b (from the x_0 half)
  and the unmasked tokens of x_t's block b. Ignores mask, positions and t."""
  joint_fn = exact.exact_denoiser(probs, vocab, length)
  ids = np.arange(length) // block_size

  def denoise_fn(x_in, t, positions, mask, kv_prefix=None):
    xt, x0 = x_in[:, :length], x_in[:, length:]
    out = []
    for b in range(length // block_size):
      context = jnp.where(ids < b, x0, jnp.where(ids == b, xt, vocab))
      out.append(joint_fn(context)[:, ids == b])
    logits = jnp.concatenate(out, axis=1)
    return jnp.concatenate([logits, jnp.zeros_like(logits)], axis=1)

  return denoise_fn


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_expected_block_nelbo_is_the_nll_with_the_exact_denoiser(block_size):
  """E_{t_b, x_t}[block NELBO] = -log p(x_0) with eps = 0: every mask pattern of
  the L = 4 positions enumerated, t integrated by 8-point Gauss-Legendre (exact:
  the linear schedule's integrand w(t) P(pattern | t) is a polynomial of degree
  < 4). The expectation of the sum over blocks only needs each block's time
  uniform, so all blocks share the quadrature node."""
  probs = np.random.default_rng(3).dirichlet(np.full(V**L, 0.7))
  denoise = exact_block_denoiser(probs, V, L, block_size)
  schedule = get_schedule("linear", eps=0.0)
  seqs = exact.all_sequences(V, L)
  patterns = exact.all_sequences(2, L).astype(bool)  # True = masked
  nodes, qweights = np.polynomial.legendre.leggauss(8)
  nodes, qweights = (nodes + 1) / 2, qweights / 2
  s, q, p = len(seqs), len(nodes), len(patterns)
  x0 = np.repeat(seqs, q * p, axis=0)
  tt = np.tile(np.repeat(nodes, p), s).astype(np.float32)
  masks = np.tile(patterns, (s * q, 1))
  noise = np.where(masks, np.float32(1.0 - 1e-7), np.float32(0.0))
  num_blocks = L // block_size
  terms = jax.jit(lambda x, t, u: block.block_nelbo_terms(
      denoise, x, None, schedule, block_size, vocab_size=V,
      t=jnp.repeat(t[:, None], num_blocks, 1), noise=u))(
          jnp.asarray(x0), jnp.asarray(tt), jnp.asarray(noise))
  np.testing.assert_array_equal(np.asarray(terms["xt"]) == V, masks)
  alpha = (1.0 - tt.astype(np.float64))[:, None]
  p_pattern = np.prod(np.where(masks, 1.0 - alpha, alpha), axis=-1)
  per_row = np.asarray(terms["nelbo"], np.float64) * p_pattern
  expected = (per_row.reshape(s, q, p).sum(-1) * qweights).sum(-1)
  np.testing.assert_allclose(expected, -np.log(probs), rtol=1e-5, atol=1e-5)


def test_clipped_and_drawn_times():
  probs = np.random.default_rng(4).dirichlet(np.full(V**L, 0.7))
  denoise = exact_block_denoiser(probs, V, L, 2)
  schedule = get_schedule("cosine")
  x0 = jnp.asarray(exact.all_sequences(V, L)[:64])
  terms = jax.jit(lambda x0: block.block_nelbo_terms(
      denoise, x0, jax.random.key(0), schedule, 2, clip=(0.45, 0.95)))(x0)
  chex.assert_shape([terms["t"]], (64, 2))
  rate = 1.0 - np.asarray(schedule.alpha(terms["t"]))
  assert np.all(rate >= 0.45 - 1e-5) and np.all(rate <= 0.95 + 1e-5)
  masked = np.asarray(terms["xt"] == V).reshape(64, 2, 2).mean()
  assert 0.55 < masked < 0.85, masked  # E[rate] = 0.7
  # Stratified over the batch, an independent offset per block.
  t = jax.jit(lambda x0: block.block_nelbo_terms(
      denoise, x0, jax.random.key(1), schedule, 2)["t"])(x0)
  for b in range(2):
    gaps = np.diff(np.sort(np.asarray(t[:, b])))
    np.testing.assert_allclose(gaps, 1 / 64, atol=1e-5)
  assert abs(float(t[0, 0] - t[0, 1])) > 1e-4
  with pytest.raises(ValueError, match="clip"):
    block.block_nelbo_terms(denoise, x0, jax.random.key(0), schedule, 2, clip=(0.5, 0.2))


@pytest.mark.parametrize("name,params", [("loglinear", {}), ("linear", {"eps": 0.0})])
def test_block_nelbo_and_gradient_are_finite_at_t_zero(name, params):
  # alpha(0) = 1: block 0 at t = 0 has weight inf and no mask; block 1 all masked.
  schedule = get_schedule(name, **params)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2 * L, V)), jnp.float32)
  x0 = jnp.array([[0, 1, 2, 0]])
  boundary = L * (1.0 - schedule.alpha(0.0) + schedule.alpha(1.0)) * np.log(V)

  def nelbo(theta):
    denoise = lambda x, t, pos, mask, kv=None: jnp.broadcast_to(theta * logits, (1, 2 * L, V))
    return block.block_nelbo_terms(denoise, x0, None, schedule, 2, t=jnp.array([[0.0, 0.5]]),
                                   noise=jnp.full((1, L), 0.9))

  def expected(theta):
    ll = jax.nn.log_softmax(theta * logits[2:L])[jnp.arange(2), x0[0, 2:]]
    return -schedule.weight(0.5) * jnp.sum(ll) + boundary

  terms = nelbo(0.7)
  np.testing.assert_allclose(terms["nelbo"], [expected(0.7)], rtol=1e-5)
  np.testing.assert_allclose(terms["per_block"][0, 0], boundary / 2, rtol=1e-5, atol=1e-7)
  grad = jax.grad(lambda theta: nelbo(theta)["nelbo"][0])(0.7)
  np.testing.assert_allclose(grad, jax.grad(expected)(0.7), rtol=1e-5)


def test_block_size_types_and_missing_key():
  zero = lambda x, t, pos, mask, kv=None: jnp.zeros(x.shape + (V,))
  x0, sched = jnp.zeros((2, L), jnp.int32), get_schedule("linear")
  want = block.block_nelbo(zero, x0, jax.random.key(0), sched, 2)
  for size in (np.int64(2), np.int32(2)):
    np.testing.assert_array_equal(block.block_nelbo(zero, x0, jax.random.key(0), sched, size),
                                  want)
  for size in (True, 3, 2.0, 0):
    with pytest.raises(ValueError, match=r"block_size must be an int >= 1 that divides"):
      block.num_blocks(L, size)
  for kw in ({"t": jnp.full((2, 2), 0.5)}, {"noise": jnp.full((2, L), 0.5)}, {}):
    with pytest.raises(ValueError, match="needs a key unless both t and noise are given"):
      block.block_nelbo(zero, x0, None, sched, 2, **kw)
  block.block_nelbo(zero, x0, None, sched, 2, t=jnp.full((2, 2), 0.5), noise=jnp.zeros((2, L)))


def exact_block_causal_denoiser(probs, vocab, length, block_size):
  """The exact model behind an uncached block-causal call on x [B, L]: block b's
  logits are the conditional given x's blocks < b (clean) and its own unmasked
  tokens."""
  joint_fn = exact.exact_denoiser(probs, vocab, length)
  ids = np.arange(length) // block_size

  def denoise_fn(x, t, positions, mask, kv_prefix=None):
    out = [joint_fn(jnp.where(ids <= b, x, vocab))[:, ids == b]
           for b in range(length // block_size)]
    return jnp.concatenate(out, axis=1)

  return denoise_fn


@pytest.mark.parametrize("order,steps", [("first_hitting", 0), ("ancestral", 1)])
def test_block_sampler_draws_the_joint(order, steps):
  """With the exact conditionals, exact within-block sampling (first hitting)
  draws p; one ancestral step per block draws prod_b prod_{n in b} p(x^n | x^{<b})."""
  vocab, length, bs, num = 2, 4, 2, 20000
  probs = np.random.default_rng(8).dirichlet(np.full(vocab**length, 0.7))
  denoise = exact_block_causal_denoiser(probs, vocab, length, bs)
  x = jax.jit(lambda key: block.block_sample(
      denoise, None, key, jnp.full((num, length), vocab, jnp.int32), bs, steps,
      get_schedule("linear"), order, use_cache=False))(jax.random.key(9))
  target = probs.reshape(vocab, vocab, vocab, vocab)
  if steps == 1:
    first = target.sum((2, 3))
    a, b = first.sum(1), first.sum(0)
    cond = target / target.sum((2, 3), keepdims=True)
    target = (a[:, None] * b[None, :])[:, :, None, None] * (
        cond.sum(3)[..., None] * cond.sum(2)[:, :, None, :])
  # Expected TV of 20000 draws over 16 cells <= 0.5 sqrt(16 * 2 / (pi 20000)) ~ 0.011.
  tv = exact.total_variation(exact.empirical_distribution(x, vocab), target.ravel())
  assert tv < 0.03, tv
  # The two targets are far from each other and from the product of marginals.
  assert exact.total_variation(target.ravel(), exact.product_of_marginals(
      probs, vocab, length)) > 0.05
  if steps == 1:
    assert exact.total_variation(target.ravel(), probs) > 0.05


SL, SB, SV = 8, 4, 5  # sampler: length, block size, vocabulary


def prompt(batch_size, seed=0):
  """x_init with one random given token per block (distinct contexts break the
  exact ties that identical all-mask blocks give confidence orders)."""
  rng = np.random.default_rng(seed)
  x = np.full((batch_size, SL), SV, np.int32)
  for b in range(SL // SB):
    pos = b * SB + rng.integers(0, SB, batch_size)
    x[np.arange(batch_size), pos] = rng.integers(0, SV, batch_size)
  return jnp.asarray(x)


@pytest.fixture(scope="module")
def sampler_model():
  model, params = tiny_model(SV, seed=2)
  return block_denoiser_fns(model, params)


def check_cached_logits(denoise, prefill, z=None, seed=5):
  """Cached logits of every block (noisy, random) equal the uncached ones."""
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.integers(0, SV, (B, SL)), jnp.int32)
  t = jnp.asarray(rng.uniform(size=(B,)), jnp.float32)
  cached_fn = jax.jit(lambda xb, b, cache: block.cached_block_logits(
      denoise, xb, t, b, cache, SB, z=z))
  full_fn = jax.jit(lambda xb, b: block.uncached_block_logits(denoise, xb, t, b, x, SB, z=z))
  prefill_fn = jax.jit(lambda xb, b, cache: block.prefill_block(
      prefill, xb, b, cache, SB, z=z))
  cache = block.init_kv_cache(prefill, x, z=z)
  for b in range(SL // SB):
    noisy = jnp.asarray(rng.integers(0, SV + 1, (B, SB)), jnp.int32)
    cached, full = cached_fn(noisy, b, cache), full_fn(noisy, b)
    chex.assert_shape(cached, (B, SB, SV))
    assert float(jnp.abs(full).max()) > 1e-2
    np.testing.assert_allclose(cached, full, atol=1e-5, rtol=1e-5)
    # Reading only the b L' keys block b needs (none for block 0) changes nothing.
    trimmed = block.cached_block_logits(denoise, noisy, t, b, cache, SB, z=z, prefix_len=b * SB)
    np.testing.assert_allclose(trimmed, full, atol=1e-5, rtol=1e-5)
    cache = prefill_fn(x[:, b * SB:(b + 1) * SB], b, cache)


def test_cached_logits_equal_uncached(sampler_model):
  check_cached_logits(*sampler_model)


@pytest.fixture(scope="module")
def latent_model():
  model, params = tiny_model(SV, latent_dim=2, seed=3)
  z = jnp.asarray(np.random.default_rng(6).normal(size=(16, SL // SB, 2)), jnp.float32)
  return (*block_denoiser_fns(model, params), z)


@pytest.mark.parametrize("order,steps,latent,segments", [
    ("ancestral", 3, False, 1), ("ancestral", 3, False, 4), ("top_prob_margin", 2, True, 4)])
def test_cached_and_uncached_sampling_agree(sampler_model, latent_model, order, steps,
                                            latent, segments):
  """Same key, same samples, whether a cached call reads all L cached keys
  (segments = 1) or only the prefix its run of blocks needs (here 0 keys for
  block 0, L' for block 1); the latent model gets a z per block (VMD)."""
  denoise, prefill, z = latent_model if latent else (*sampler_model, None)
  x_init = prompt(16)
  run = jax.jit(lambda key, use_cache: block.block_sample(
      denoise, prefill, key, x_init, SB, steps, get_schedule("linear"), order,
      use_cache=use_cache, cache_segments=segments, z=z, return_nfe=True), static_argnums=1)
  x_c, nfe_c = run(jax.random.key(7), True)
  x_u, nfe_u = run(jax.random.key(7), False)
  np.testing.assert_array_equal(x_c, x_u)
  assert int(nfe_c) == int(nfe_u) > 0
  assert int(jnp.sum(x_c == SV)) == 0
  given = x_init != SV
  np.testing.assert_array_equal(np.asarray(x_c)[given], np.asarray(x_init)[given])
  assert len(np.unique(np.asarray(x_c), axis=0)) > 1  # it does draw


def test_prefix_segments_cover_the_blocks_with_enough_prefix():
  assert block.prefix_segments(64, 4) == [(0, 16, 15), (16, 32, 31), (32, 48, 47),
                                          (48, 64, 63)]
  assert block.prefix_segments(2, 4) == [(0, 1, 0), (1, 2, 1)]
  assert block.prefix_segments(5, 1) == [(0, 5, 4)]
  for blocks in range(1, 40):
    for num in range(1, 9):
      segments = block.prefix_segments(blocks, num)
      assert len(segments) == min(num, blocks)
      assert [b for lo, hi, _ in segments for b in range(lo, hi)] == list(range(blocks))
      assert all(prefix == hi - 1 for lo, hi, prefix in segments)  # block b reads b blocks
  with pytest.raises(ValueError, match="cache_segments must be an int >= 1, got 0"):
    block.block_sample(lambda *a, **k: None, lambda *a, **k: None, jax.random.key(0),
                       jnp.full((1, 4), 2), 2, 1, get_schedule("linear"), cache_segments=0)


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("vocab_size", [None, V])
def test_block_sampler_names_logits_of_the_wrong_shape(use_cache, vocab_size):
  """A network returning one position's logits [B, 1, V]: a one-line ValueError
  naming its shape and the expected one, cached ([B, L', V]) or not ([B, L, V];
  also the uncached probe that infers V when it is not given)."""
  one_position = lambda x, *a, **kw: jnp.zeros((x.shape[0], 1, V))
  prefill = lambda x, *a, **kw: [(jnp.zeros(x.shape[:2] + (1,)),) * 2]
  expected = (r"\[B, L', V\] = \(2, 2, \?\)" if use_cache and vocab_size
              else r"\[B, L, V\] = \(2, 4, \?\)")
  with pytest.raises(ValueError, match=r"denoise_fn returned logits of shape \(2, 1, 3\), "
                                       r"expected " + expected):
    block.block_sample(one_position, prefill, jax.random.key(0), jnp.full((2, L), V), 2, 2,
                       get_schedule("linear"), vocab_size=vocab_size, use_cache=use_cache)


def test_block_sampler_takes_traced_temperature_and_top_p():
  """temperature and top_p as jit arguments: the same samples as the concrete
  values from the same key (they used to raise TracerBoolConversionError)."""
  table = jnp.asarray(np.random.default_rng(3).normal(size=(V + 1, V)), jnp.float32)
  denoise = lambda x, t, *a, **kw: table[x] + t[..., None]
  run = lambda key, temperature, top_p: block.block_sample(
      denoise, None, key, jnp.full((64, L), V), 2, 2, get_schedule("linear"), "top_prob",
      temperature=temperature, top_p=top_p, use_cache=False)
  key = jax.random.key(7)
  for temperature, top_p in [(0.7, 0.6), (0.0, 0.6)]:
    np.testing.assert_array_equal(jax.jit(run)(key, temperature, top_p),
                                  jax.jit(lambda k: run(k, temperature, top_p))(key))


def test_block_sampler_skips_idle_steps_exactly(sampler_model):
  """100 ancestral steps per block with a time-conditioned network: same key, same
  samples with and without the calls at idle steps; at most L' - 1 calls per block
  (one token per block is given), however many sequences run."""
  denoise, prefill = sampler_model
  x_init = prompt(16)
  run = jax.jit(lambda key, skip: block.block_sample(
      denoise, prefill, key, x_init, SB, 100, get_schedule("cosine"), "ancestral",
      skip_idle=skip, return_nfe=True), static_argnums=1)
  x_skip, nfe_skip = run(jax.random.key(3), True)
  x_all, nfe_all = run(jax.random.key(3), False)
  np.testing.assert_array_equal(x_skip, x_all)
  assert int(nfe_skip) <= (SL // SB) * (SB - 1) < int(nfe_all)
  assert int(jnp.sum(x_skip == SV)) == 0


def test_latent_per_block(latent_model):
  denoise, prefill, z = latent_model
  z = z[:B]
  check_cached_logits(denoise, prefill, z=z)
  x0 = jnp.asarray(np.random.default_rng(7).integers(0, SV, (B, SL)), jnp.int32)
  nelbo = jax.jit(lambda z: block.block_nelbo_terms(
      denoise, x0, jax.random.key(1), get_schedule("linear"), SB, z=z)["nelbo"])
  a, b = nelbo(z), nelbo(z + 3.0)
  assert np.all(np.isfinite(a)) and np.abs(a - b).max() > 1e-3  # z is used


@pytest.mark.parametrize("loss", ["block", "prime"])
def test_a_clipped_mask_rate_below_eps_gives_a_finite_loss(loss):
  """clip = (0, 0.5): a uniform near 0 asks for a mask rate below eps, which
  inverts to t = 0, where a polynomial schedule with k < 1 has an infinite weight
  while eps still masks; the time is kept above 0, so loss and gradient are finite."""
  from vmd_jax import prime
  schedule, V = get_schedule("polynomial", k=0.5), 3
  x0 = jnp.zeros((1, 4), jnp.int32)
  noise = jnp.array([[0.99999, 0.1, 0.1, 0.1]])  # the first token masked at every t

  def nelbo(w):
    fn = lambda x, t, positions, mask, kv_prefix=None, *, z=None: w * jnp.ones(x.shape[:2] + (V,))
    if loss == "prime":
      code = prime.DigitCode(V, 1)
      return prime.block_nelbo_terms(fn, x0, None, schedule, code, 4, t=jnp.array([[1e-5]]),
                                     noise=noise[..., None], clip=(0.0, 0.5))["nelbo"].sum()
    return block.block_nelbo_terms(fn, x0, None, schedule, 4, vocab_size=V,
                                   t=jnp.array([[1e-5]]), noise=noise, clip=(0.0, 0.5))["nelbo"].sum()

  value, grad = jax.value_and_grad(nelbo)(1.0)
  assert np.isfinite(float(value)) and np.isfinite(float(grad)), (value, grad)
