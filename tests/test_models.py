"""Denoiser, LatentEncoder and the transformer blocks: shapes, init, masks, KV cache."""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import losses, md4
from vmd_jax.forward import mask_tokens
from vmd_jax.networks import Denoiser, LatentEncoder, collect_kv
from vmd_jax.networks.encoder import soft_clip
from vmd_jax.networks.transformer import (KV_COLLECTION, Attention, einsum_attention,
                                          glu_hidden_size)
from vmd_jax.schedules import get_schedule

V, N, B, D = 5, 8, 3, 2
SMALL = dict(vocab_size=V, width=32, depth=2, num_heads=4)
MODES = ["adaln", "add", "prefix"]


def make(latent_mode="adaln", latent_dim=D, **kwargs):
  return Denoiser(**SMALL, latent_dim=latent_dim, latent_mode=latent_mode, **kwargs)


def length(mode, latent_dim=D):
  """N, or N - 1 where a latent (or cls) token is prepended: the transformer
  then runs on N tokens again and eager ops reuse their compiled shapes."""
  return N - 1 if mode in ("prefix", "cls") and latent_dim else N


def inputs(seed=0, latent_dim=D, n=N):
  rng = np.random.default_rng(seed)
  xt = jnp.asarray(rng.integers(0, V + 1, (B, n)), jnp.int32)
  t = jnp.asarray(rng.uniform(size=(B,)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(B, latent_dim)), jnp.float32) if latent_dim else None
  return xt, t, z


def tokens(seed=0, n=N):
  """Clean tokens x_0, int [B, n] in [0, V)."""
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, n)), jnp.int32)


def randomize(params, seed=1, scale=0.1):
  """Adds N(0, scale^2) to every parameter, so zero-initialised layers (head,
  adaLN) stop hiding the paths under test."""
  rng = np.random.default_rng(seed)  # numpy: jax.random compiles slowly on CPU
  return jax.tree.map(
      lambda p: jnp.asarray(np.asarray(p) + scale * rng.normal(size=p.shape), p.dtype), params)


def init(model, xt, t, z=None, **kwargs):
  return model.init(jax.random.key(0), xt, t, z, **kwargs)


@pytest.mark.parametrize("mode,latent_dim", [("adaln", 0)] + [(m, D) for m in MODES])
def test_logits_shape_dtype_and_zero_at_init(mode, latent_dim):
  model, n = make(mode, latent_dim), length(mode, latent_dim)
  xt, t, z = inputs(latent_dim=latent_dim, n=n)
  variables = init(model, xt, t, z)
  assert set(variables) == {"params"}
  logits = model.apply(variables, xt, t, z)
  chex.assert_shape(logits, (B, n, V))
  chex.assert_type(logits, jnp.float32)
  np.testing.assert_array_equal(logits, 0.0)
  logits = model.apply(randomize(variables), xt, t, z)
  assert np.all(np.isfinite(logits)) and np.abs(logits).max() > 1e-2


def test_md4_nelbo_at_init_is_n_log_v():
  model = make(latent_dim=0)
  x0, (_, t, _) = tokens(), inputs(latent_dim=0)
  variables = init(model, x0, t)
  denoise = lambda xt, t: model.apply(variables, xt, t)
  schedule = get_schedule("linear")
  key = jax.random.key(4)
  noise = jnp.asarray(np.random.default_rng(6).uniform(size=(B, N)), jnp.float32)
  terms = md4.nelbo_terms(denoise, x0, key, schedule, t=t, noise=noise)
  # Zero logits: each masked token costs exactly log V, ...
  xt = mask_tokens(x0, t, schedule, V, noise=noise)
  num_masked = jnp.sum(xt == V, axis=-1)
  np.testing.assert_allclose(terms["diffusion"], schedule.weight(t) * num_masked * math.log(V),
                             rtol=1e-5)
  # ... so with everything masked (one discrete step) the NELBO is N log V, up to
  # md4's eps terms: N log V ((1 - 2 eps) / (1 - eps) + 2 eps).
  nelbo = md4.nelbo(denoise, x0, key, schedule, num_steps=1,
                           noise=jnp.full((B, N), 0.5))
  eps = schedule.eps
  np.testing.assert_allclose(nelbo, N * math.log(V) * ((1 - 2 * eps) / (1 - eps) + 2 * eps),
                             rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_latent_changes_logits(mode):
  model = make(mode)
  xt, t, z = inputs(n=length(mode))
  params = randomize(init(model, xt, t, z))
  a = model.apply(params, xt, t, z)
  b = model.apply(params, xt, t, z + 1.0)
  assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("mode", ["adaln", "add"])
def test_zero_latent_init_starts_as_the_model_without_z(mode):
  """latent_init="zeros": at initialisation the VMD denoiser is exactly its MD4
  twin (the same parameters less latent_proj) whatever z is; the default init
  lets z move the logits from the first step."""
  xt, t, z = inputs()
  params = init(make(mode, latent_init="zeros"), xt, t, z)["params"]
  kernel = params["latent_proj"]["kernel"]
  np.testing.assert_array_equal(kernel, 0.0)
  params = randomize({k: v for k, v in params.items() if k != "latent_proj"})
  params["latent_proj"] = {"kernel": kernel, "bias": jnp.zeros(kernel.shape[1])}
  vmd = make(mode, latent_init="zeros")
  twin = make(mode, latent_dim=0)
  expected = twin.apply({"params": {k: v for k, v in params.items() if k != "latent_proj"}},
                        xt, t)
  for shift in (0.0, 3.0):
    np.testing.assert_allclose(vmd.apply({"params": params}, xt, t, z + shift), expected,
                               rtol=1e-6, atol=1e-6)
  default = init(make(mode), xt, t, z)["params"]["latent_proj"]["kernel"]
  assert np.abs(default).min() > 0


def block_mask(block_ids_q, block_ids_k):
  """True where query and key are in the same block, [1, 1, Nq, Nk]."""
  return (block_ids_q[:, None] == block_ids_k[None, :])[None, None]


@pytest.mark.parametrize("mode,latent_dim", [("adaln", 0), ("prefix", D)])
def test_attention_mask_blocks_information(mode, latent_dim):
  model, n = make(mode, latent_dim), length(mode, latent_dim)
  xt, t, z = inputs(latent_dim=latent_dim, n=n)
  blocks = jnp.arange(n) // (N // 2)
  mask = block_mask(blocks, blocks)
  params = randomize(init(model, xt, t, z, attention_mask=mask))
  xt2 = xt.at[:, -1].set((xt[:, -1] + 1) % (V + 1))  # a token of the second block
  a = model.apply(params, xt, t, z, attention_mask=mask)
  b = model.apply(params, xt2, t, z, attention_mask=mask)
  first = slice(0, N // 2)
  np.testing.assert_array_equal(a[:, first], b[:, first])
  assert np.abs(a[:, N // 2:] - b[:, N // 2:]).max() > 1e-4
  c = model.apply(params, xt2, t, z)  # without the mask it does flow
  assert np.abs(a[:, first] - c[:, first]).max() > 1e-4


@pytest.mark.parametrize("attention", ["xla", "einsum"])
def test_denoiser_kv_cache_equals_block_causal_pass(attention):
  # Block diffusion: the clean first block is cached, the second block attends to
  # it and to itself; one pass over both with a block-causal mask must agree.
  model = make(latent_dim=0, attention=attention)
  m = N // 2
  xt, t, _ = inputs(latent_dim=0)
  blocks = jnp.arange(N) // m
  causal = (blocks[:, None] >= blocks[None, :])[None, None]
  params = randomize(init(model, xt, t))
  full = model.apply(params, xt, t, attention_mask=causal)
  positions = jnp.arange(N)[None]
  _, state = model.apply(params, xt[:, :m], t, positions=positions[:, :m],
                         mutable=[KV_COLLECTION])
  cache = collect_kv(state[KV_COLLECTION])
  assert len(cache) == SMALL["depth"]
  cached = model.apply(params, xt[:, m:], t, positions=positions[:, m:], kv_prefix=cache)
  np.testing.assert_allclose(cached, full[:, m:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["xla", "einsum"])
def test_attention_kv_prefix_equals_concatenated_sequence(implementation):
  m, n, heads, width = N // 2, N // 2, 4, 32
  attn = Attention(heads, implementation=implementation)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(B, m + n, width)), jnp.float32)
  positions = jnp.arange(m + n)[None]
  mask = jnp.asarray((rng.uniform(size=(1, 1, m + n, m + n)) < 0.6) | np.eye(m + n, dtype=bool))
  params = randomize(attn.init(jax.random.key(2), x, positions, mask))
  full = attn.apply(params, x, positions, mask)
  _, state = attn.apply(params, x[:, :m], positions[:, :m], mask[:, :, :m, :m],
                        mutable=[KV_COLLECTION])
  k, v = state[KV_COLLECTION]["kv"]
  chex.assert_shape([k, v], (B, m, heads, width // heads))
  cached = attn.apply(params, x[:, m:], positions[:, m:], mask[:, :, m:], kv_prefix=(k, v))
  np.testing.assert_allclose(cached, full[:, m:], atol=1e-5)


def test_rope_makes_logits_shift_invariant():
  model = make(latent_dim=0, absolute_positions=False)
  xt, t, _ = inputs(latent_dim=0)
  params = randomize(init(model, xt, t))
  a = model.apply(params, xt, t)
  b = model.apply(params, xt, t, positions=jnp.arange(N)[None] + 7)
  np.testing.assert_allclose(a, b, atol=1e-4)
  c = model.apply(params, xt, t, positions=jnp.arange(N)[None][:, ::-1])
  assert np.abs(a - c).max() > 1e-3


def test_absolute_positions_break_the_all_mask_symmetry():
  """An all-mask input: with RoPE alone every position gets the same logits (the
  values attended to are all equal), so z could never say 'position n holds k+n';
  absolute positions make the logits position-dependent."""
  xt = jnp.full((B, N), V, jnp.int32)
  t = jnp.full((B,), 0.9)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(B, D)), jnp.float32)
  for kwargs, differs in (({"absolute_positions": False}, False),
                          ({"absolute_positions": True}, True),
                          ({"absolute_positions": False, "learned_positions": N}, True)):
    model = make("adaln", D, **kwargs)
    params = init(model, xt, t, z)
    if "learned_positions" in kwargs:
      assert params["params"]["position_embed"]["embedding"].shape == (N, model.width)
    logits = np.asarray(model.apply(randomize(params), xt, t, z))
    spread = np.abs(logits - logits[:, :1]).max()
    assert (spread > 1e-3) == differs, (kwargs, spread)


def test_bfloat16_compute_returns_float32_logits():
  model, ref_model = make("prefix", dtype=jnp.bfloat16), make("prefix")
  xt, t, z = inputs(n=length("prefix"))
  shapes = jax.eval_shape(lambda: init(model, xt, t, z))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
  params = randomize(init(ref_model, xt, t, z))  # the same params; bf16 compute
  logits = jax.jit(model.apply)(params, xt, t, z)  # one compile, not ~100 bf16 ops
  chex.assert_type(logits, jnp.float32)
  assert np.all(np.isfinite(logits))
  ref = ref_model.apply(params, xt, t, z)
  assert np.abs(logits - ref).max() < 0.1 * np.abs(ref).max()


def test_cond_dim_sets_the_conditioning_size():
  xt, t, z = inputs()
  shapes = jax.eval_shape(lambda: init(make("adaln", cond_dim=16), xt, t, z))["params"]
  assert shapes["latent_proj"]["kernel"].shape == (D, 16)
  assert shapes["transformer"]["block_0"]["ada_ln"]["kernel"].shape == (16, 6 * SMALL["width"])


def md4_probe_config(width=256, depth=4, num_heads=4, config="text8_md4"):
  from vmd_jax.trainer import config as config_lib
  c = config_lib.load_config_file(f"vmd_jax/configs/{config}.py")
  c.model.width, c.model.depth, c.model.num_heads = width, depth, num_heads
  return config_lib.validate(c)


def param_shapes(model, seq_len=256):
  return jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, seq_len), jnp.int32)))


@pytest.mark.parametrize("config", ["text8_md4", "text8_bd3", "text8_vmd"])
def test_text8_configs_build_md4s_network(config):
  """md4's own counts (google-deepmind/md4, DiscreteClassifier on its text8
  config, V = 27): 3,702,336 at 4 layers, 4 heads, width 256; 88,734,272 at 12,
  12, 768. text8_vmd's denoiser adds only the latent's projection to C = 64."""
  from vmd_jax.trainer import build
  latent = 4 * 64 + 64 if config == "text8_vmd" else 0
  for size, count in (((256, 4, 4), 3_702_336), ((768, 12, 12), 88_734_272)):
    shapes = param_shapes(build.build_model(md4_probe_config(*size, config=config), 27, 256))
    assert sum(x.size for x in jax.tree.leaves(shapes["denoiser"])) == count + latent, size
  p = param_shapes(build.build_model(md4_probe_config(), 27, 256))["denoiser"]["params"]
  block = p["transformer"]["block_0"]
  assert block["mlp"]["wi"]["kernel"].shape == (256, 2 * 704)   # GLU: 8/3 * 256 -> 704
  assert block["mlp"]["wo"]["kernel"].shape == (704, 256)
  assert block["ada_ln"]["kernel"].shape == (64, 6 * 256)       # conditioning width 64
  assert p["embed"]["embedding"].shape == (28, 64) and p["embed_proj"]["kernel"].shape == (64, 256)
  assert p["time_mlp_0"]["kernel"].shape == (64, 256) and p["time_mlp_1"]["kernel"].shape == (256, 64)
  no_bias = [block["attn"]["qkv"], block["attn"]["out"], block["mlp"]["wi"], block["mlp"]["wo"],
             p["head"]]
  assert all(set(layer) == {"kernel"} for layer in no_bias)


def test_glu_hidden_size_rounds_like_md4():
  assert glu_hidden_size(256, 8 / 3, 32) == 704
  assert glu_hidden_size(768, 8 / 3, 32) == 2048
  assert glu_hidden_size(64, 4.0) == 256
  assert glu_hidden_size(100, 1.0, 32) == 128


def test_einsum_attention_equals_dot_product_attention():
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(B, N, 2, 8)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(B, N + 3, 2, 8)), jnp.float32) for _ in range(2))
  mask = jnp.asarray(rng.uniform(size=(B, 1, N, N + 3)) < 0.5).at[..., 0].set(True)
  for m in (None, mask):
    ref = jax.nn.dot_product_attention(q, k, v, mask=m)
    np.testing.assert_allclose(einsum_attention(q, k, v, m), ref, atol=2e-6)
  # Masked keys carry no weight: changing their values changes nothing.
  v2 = jnp.where(mask[:, 0, 0][:, :, None, None], v, 100.0)
  np.testing.assert_allclose(einsum_attention(q[:, :1], k, v2, mask[:, :, :1]),
                             einsum_attention(q[:, :1], k, v, mask[:, :, :1]), atol=2e-6)


def test_md4_options_and_attention_paths_agree():
  """The md4 options build a working model; "einsum" and "xla" give the same
  logits for the same parameters; remat gives the same loss and gradients."""
  kwargs = dict(latent_dim=0, embed_dim=8, cond_dim=8, time_features=8, time_hidden=32,
                mlp_ratio=8 / 3, mlp_multiple_of=8, mlp_type="glu", use_bias=False,
                absolute_positions=False)
  xt, t, _ = inputs(latent_dim=0)
  model = make(**kwargs)
  params = randomize(init(model, xt, t))
  ref = model.apply(params, xt, t)
  einsum = make(attention="einsum", **kwargs).apply(params, xt, t)
  np.testing.assert_allclose(einsum, ref, atol=1e-5)

  def loss_and_grads(remat):
    m = make(remat=remat, **kwargs)
    return jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply(p, xt, t) ** 2)))(params)

  (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
  np.testing.assert_allclose(l1, l0, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_depth_scaled_init_sets_the_mlp_variance():
  xt, t, _ = inputs(latent_dim=0)
  for scaled, variance in ((False, 1 / 32), (True, (2 / 4) / 32)):
    model = Denoiser(vocab_size=V, width=32, depth=4, num_heads=4, depth_scaled_init=scaled)
    kernel = init(model, xt, t)["params"]["transformer"]["block_1"]["mlp"]["wi"]["kernel"]
    assert abs(float(jnp.var(kernel)) / variance - 1) < 0.05, (scaled, float(jnp.var(kernel)))


def test_config_rejects_bad_model_fields():
  from vmd_jax.trainer import config as config_lib
  for field, value, message in (("mlp_type", "relu", "model.mlp_type = 'relu'"),
                                ("attention", "flash", "model.attention = 'flash'"),
                                ("time_features", 63, "time_features = 63; must be even"),
                                ("mlp_multiple_of", 0, "model.mlp_multiple_of = 0"),
                                ("latent_init", "ones", "model.latent_init = 'ones'")):
    c = config_lib.base_config()
    c.model[field] = value
    with pytest.raises(ValueError, match=message):
      config_lib.validate(c)


def test_per_token_time_and_latent():
  model = make("adaln")
  xt, t, z = inputs()
  params = randomize(init(model, xt, t, z))
  a = model.apply(params, xt, t, z)
  b = model.apply(params, xt, jnp.repeat(t[:, None], N, 1),
                  jnp.repeat(z[:, None], N, 1))
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_dropout_only_when_training():
  model = make(latent_dim=0, dropout_rate=0.5)
  xt, t, _ = inputs(latent_dim=0)
  params = randomize(init(model, xt, t))
  np.testing.assert_array_equal(model.apply(params, xt, t), model.apply(params, xt, t))
  a = model.apply(params, xt, t, train=True, rngs={"dropout": jax.random.key(0)})
  assert np.abs(a - model.apply(params, xt, t)).max() > 1e-3


def test_denoiser_errors():
  xt, t, z = inputs()
  with pytest.raises(ValueError, match="latent_mode.*'adaln', 'add', 'prefix'"):
    init(make("film"), xt, t, z)
  with pytest.raises(ValueError, match="latent_dim"):
    init(make("adaln"), xt, t, None)
  with pytest.raises(ValueError, match="latent_dim"):
    init(make(latent_dim=0), xt, t, z)
  with pytest.raises(ValueError, match="latent_dim"):
    init(make("add"), xt, t, jnp.ones((B, D + 1)))


def encoder(**kwargs):
  return LatentEncoder(**SMALL, latent_dim=D, **kwargs)


def init_encoder(enc, x0, xt=None):
  return enc.init(jax.random.key(0), x0, xt)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("sees_xt", [False, True])
def test_encoder_outputs(pooling, sees_xt):
  enc = encoder(sees_xt=sees_xt, pooling=pooling)
  x0 = tokens(n=length(pooling))
  xt = jnp.where(jnp.arange(x0.shape[1]) % 2 == 0, V, x0)
  params = init_encoder(enc, x0, xt)
  mean, logvar = enc.apply(params, x0, xt)
  chex.assert_shape([mean, logvar], (B, D))
  chex.assert_type([mean, logvar], jnp.float32)
  assert np.all(np.isfinite(mean)) and np.all(np.isfinite(logvar))
  # Near N(0, I) at init, but a function of x_0.
  assert np.abs(mean).max() < 1.0 and np.abs(logvar).max() < 1.0
  mean2, _ = enc.apply(params, (x0 + 1) % V, xt)
  assert np.abs(mean - mean2).max() > 1e-4
  mean3, _ = enc.apply(params, x0, jnp.full_like(xt, V))
  if sees_xt:
    assert np.abs(mean - mean3).max() > 1e-4
  else:
    np.testing.assert_array_equal(mean, mean3)


def test_encoder_errors_and_soft_clip():
  x0 = jnp.zeros((B, N), jnp.int32)
  with pytest.raises(ValueError, match="pooling.*'mean', 'cls'"):
    init_encoder(encoder(pooling="max"), x0)
  with pytest.raises(ValueError, match="xt"):
    init_encoder(encoder(sees_xt=True), x0)
  x = np.concatenate([np.linspace(-1e3, -15.0, 50), np.linspace(-15.0, 2.0, 1701)[1:],
                      np.linspace(2.0, 1e3, 50)[1:]]).astype(np.float32)  # holds 0
  y = np.asarray(soft_clip(x, -10.0, 5.0))
  assert np.all(y >= -10.0) and np.all(y <= 5.0) and np.all(np.diff(y) >= 0)
  inner = (x >= -15.0) & (x <= 2.0)  # strictly inside and increasing, in float32
  assert np.all(y[inner] > -10.0) and np.all(y[inner] < 5.0)
  assert np.all(np.diff(y[inner]) > 0)
  assert abs(y[x == 0.0][0]) < 0.01


def test_vmd_loss_runs_with_the_models():
  model, enc = make("adaln"), encoder(sees_xt=True)
  x0 = tokens()
  xt, t, z = inputs()
  dparams, eparams = init(model, xt, t, z), init_encoder(enc, x0, xt)
  out = losses.vmd_loss(lambda x, s, z: model.apply(dparams, x, s, z),
                        lambda x0, xt, t: enc.apply(eparams, x0, xt),
                        x0, jax.random.key(1), get_schedule("linear"))
  chex.assert_shape(out["loss"], (B,))
  assert np.all(np.isfinite(out["loss"])) and np.all(out["kl"] >= 0)


@pytest.mark.parametrize("use_bias", [True, False])
def test_split_dense_is_one_dense_split(use_bias):
  """SplitDense has nn.Dense(2F)'s parameters, drawn alike from the same key (so
  checkpoints of the fused GLU load), and returns that Dense's output split in two."""
  from vmd_jax.networks.transformer import SplitDense
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  split, dense = SplitDense(24, 2, use_bias), nn.Dense(48, use_bias=use_bias)
  params = split.init(jax.random.key(0), x)
  fused = dense.init(jax.random.key(0), x)
  assert jax.tree.structure(params) == jax.tree.structure(fused)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fused)):
    np.testing.assert_array_equal(a, b)
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias
  a, b = split.apply(params, x)
  whole = dense.apply(params, x)
  np.testing.assert_allclose(jnp.concatenate([a, b], -1), whole, rtol=1e-5, atol=1e-6)
