"""Block diffusion wired into the model, the config and the trainer: the block
loss through ``MaskedDiffusion``, block VMD's per-block latents, cached sampling
through the model, and a block run end to end."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax.trainer import build, config as config_lib, evaluate
from vmd_jax.networks import MaskedDiffusion
from vmd_jax.networks import Denoiser, LatentEncoder
from vmd_jax.schedules import get_schedule

from test_train import REPO, tiny_config

V, L, B, D = 5, 8, 4, 2


def randomize(params, seed=0, scale=0.3):
  """Every parameter N(0, scale^2): logits far from the zero head's uniform."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: jnp.asarray(scale * rng.normal(size=p.shape), p.dtype), params)


def model_and_params(block_size, latent_dim=0, seed=0, **kwargs):
  den = Denoiser(vocab_size=V, width=16, depth=2, num_heads=2, mlp_ratio=2.0,
                 latent_dim=latent_dim)
  enc = None
  if latent_dim:
    enc = LatentEncoder(vocab_size=V, width=16, depth=1, num_heads=2, latent_dim=latent_dim,
                        block_size=block_size or 0)
  model = MaskedDiffusion(den, get_schedule("linear"), enc, block_size=block_size, **kwargs)
  x0 = tokens()
  return model, randomize(model.init(jax.random.key(seed), x0), seed)


def tokens(seed=1):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, (B, L)), jnp.int32)


def test_one_block_of_length_l_is_the_md4_loss():
  """block_size = L through the model (a 2L-token call with the block-diffusion
  mask) gives MD4's per-sequence NELBO for the same times and masking noise."""
  plain, params = model_and_params(None)
  blocked = MaskedDiffusion(plain.denoiser, plain.schedule, block_size=L)
  x0 = tokens()
  t = jnp.asarray([0.1, 0.4, 0.7, 0.95])
  noise = jax.random.uniform(jax.random.key(3), x0.shape)
  a = plain.loss(params, x0, jax.random.key(0), t=t, noise=noise)
  b = blocked.loss(params, x0, jax.random.key(0), t=t[:, None], noise=noise)
  assert float(jnp.min(a["nelbo"])) > 1.0  # not the trivial all-unmasked case
  np.testing.assert_allclose(a["nelbo"], b["nelbo"], rtol=2e-5)
  np.testing.assert_allclose(a["per_token"], b["per_token"], rtol=2e-5, atol=1e-6)


def test_clipped_mask_rate_only_in_training():
  model, params = model_and_params(2)
  clipped = MaskedDiffusion(model.denoiser, model.schedule, block_size=2,
                            train_mask_rate=(0.45, 0.95))
  x0, key = tokens(), jax.random.key(4)
  # Evaluation (train=False) ignores the clip: the same unclipped bound.
  np.testing.assert_array_equal(model.loss(params, x0, key)["nelbo"],
                                clipped.loss(params, x0, key)["nelbo"])
  # Training draws every block's mask rate 1 - alpha(t) inside [0.45, 0.95].
  t = clipped.loss(params, x0, key, train=True)["t"]
  rate = 1.0 - model.schedule.alpha(t)
  assert t.shape == (B, L // 2)
  assert float(rate.min()) >= 0.45 - 1e-5 and float(rate.max()) <= 0.95 + 1e-5


def test_block_encoder_is_block_causal_and_per_block():
  """q(z_b | x_0^{<=b}): one latent per block, unchanged by later blocks."""
  enc = LatentEncoder(vocab_size=V, width=16, depth=2, num_heads=2, latent_dim=D, block_size=2)
  x0 = tokens()
  params = randomize(enc.init(jax.random.key(0), x0))
  mean, logvar = enc.apply(params, x0)
  assert mean.shape == logvar.shape == (B, L // 2, D)
  changed = x0.at[:, 4:].set((x0[:, 4:] + 1) % V)  # blocks 2 and 3 only
  mean2, _ = enc.apply(params, changed)
  np.testing.assert_allclose(mean[:, :2], mean2[:, :2], rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(mean[:, 2:] - mean2[:, 2:]))) > 1e-3
  with pytest.raises(ValueError, match=f"block_size must be an int >= 1 that divides the "
                                       f"sequence length {L}, got block_size=3"):
    LatentEncoder(vocab_size=V, width=16, depth=1, num_heads=2, latent_dim=D,
                  block_size=3).init(jax.random.key(0), x0)
  with pytest.raises(ValueError, match="block_size=2 needs pooling='mean', got pooling="):
    LatentEncoder(vocab_size=V, width=16, depth=1, num_heads=2, latent_dim=D, block_size=2,
                  pooling="cls").init(jax.random.key(0), x0)


def test_block_vmd_loss_terms():
  """loss = nelbo(z) + beta KL with KL summed over blocks; bound = nelbo + KL;
  with beta = 1 the loss is the bound."""
  model, params = model_and_params(2, latent_dim=D, beta=1.0)
  x0 = tokens()
  terms = model.loss(params, x0, jax.random.key(5))
  np.testing.assert_allclose(terms["loss"], terms["bound"], rtol=1e-6)
  np.testing.assert_allclose(terms["bound"], terms["nelbo"] + terms["kl"], rtol=1e-6)
  post = model.encode_posteriors(params, x0)
  assert post.mean.shape == (B * L // 2, D)
  kl = np.asarray(post.kl_per_dim()).reshape(B, -1).sum(-1)
  np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)
  assert float(jnp.min(terms["kl"])) > 0


@pytest.mark.parametrize("latent_dim", [0, D])
def test_model_samples_with_and_without_the_cache_agree(latent_dim):
  model, params = model_and_params(2, latent_dim=latent_dim)
  x_init = jnp.full((B, L), V, jnp.int32).at[:, 0].set(1)  # a one-token prompt
  draw = jax.jit(lambda key, cache: model.sample(params, key, x_init, 8, "top_prob",
                                                 use_cache=cache), static_argnums=1)
  a, nfe = draw(jax.random.key(7), True)
  b, _ = draw(jax.random.key(7), False)
  np.testing.assert_array_equal(a, b)
  # 2 steps in each of 4 blocks, but block 0 holds one mask (the prompt fills the
  # other), revealed at its first step: 1 + 2 + 2 + 2 calls.
  assert int(nfe) == 7 and bool(jnp.all(a[:, 0] == 1)) and bool(jnp.all(a < V))
  with pytest.raises(ValueError, match="NFE 6 is not a multiple of the 4 blocks"):
    model.sample(params, jax.random.key(0), x_init, 6, "random")


def conditional_model(seed=0):
  """Block VMD (L' = 2) with the conditional prior p(z_b | x^{<b})."""
  model, _ = model_and_params(2, latent_dim=D, beta=1.0)
  prior = LatentEncoder(vocab_size=V + 1, width=16, depth=2, num_heads=2, latent_dim=D,
                        block_size=2)
  model = MaskedDiffusion(model.denoiser, model.schedule, model.encoder, beta=1.0,
                          block_size=2, prior_encoder=prior)
  return model, randomize(model.init(jax.random.key(seed), tokens()), seed)


def test_conditional_prior_sees_only_the_earlier_blocks_and_is_the_kl_target():
  model, params = conditional_model()
  assert set(params) == {"denoiser", "encoder", "prior"}
  x0 = tokens()
  mean, logvar = model.prior_fn(params)(x0)
  assert mean.shape == logvar.shape == (B, L // 2, D)
  for b in range(L // 2):  # blocks >= b changed (to masks, as the sampler has them)
    changed = x0.at[:, 2 * b:].set(V)
    mean2, logvar2 = model.prior_fn(params)(changed)
    np.testing.assert_allclose(mean2[:, :b + 1], mean[:, :b + 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logvar2[:, :b + 1], logvar[:, :b + 1], rtol=1e-5, atol=1e-6)
  changed = x0.at[:, :2].set((x0[:, :2] + 1) % V)  # block 0 moves every later prior
  assert float(jnp.min(jnp.max(jnp.abs(model.prior_fn(params)(changed)[0] - mean)[:, 1:],
                               axis=(1, 2)))) > 1e-4
  terms = model.loss(params, x0, jax.random.key(5))
  post = model.encode_posteriors(params, x0)
  prior = type(post)(mean.reshape(-1, D), logvar.reshape(-1, D))
  kl = np.asarray(post.kl_per_dim(prior)).reshape(B, -1).sum(-1)
  np.testing.assert_allclose(terms["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(terms["loss"], terms["nelbo"] + kl, rtol=1e-5)


def test_conditional_prior_samples_agree_with_and_without_the_cache():
  model, params = conditional_model()
  x_init = jnp.full((B, L), V, jnp.int32)
  draw = jax.jit(lambda key, cache, prior: model.sample(params, key, x_init, 8, "top_prob",
                                                        use_cache=cache, prior=prior),
                 static_argnums=(1, 2))
  a, nfe = draw(jax.random.key(7), True, None)
  b, _ = draw(jax.random.key(7), False, None)
  np.testing.assert_array_equal(a, b)
  assert int(nfe) == 8 and bool(jnp.all(a < V))
  standard = draw(jax.random.key(7), True, lambda key, n: jax.random.normal(key, (n, D)))[0]
  assert bool(jnp.any(standard != a))  # an explicit prior replaces the conditional one


def test_conditional_prior_needs_block_vmd():
  model, _ = conditional_model()
  with pytest.raises(ValueError, match="needs block VMD"):
    MaskedDiffusion(model.denoiser, model.schedule, model.encoder, block_size=0,
                    prior_encoder=model.prior_encoder)
  c = tiny_config("vmd")
  c.prior.kind = "conditional"
  with pytest.raises(ValueError, match=r"'conditional' \(p\(z_b \| x\^\{<b\}\)\) needs block VMD"):
    config_lib.validate(c)
  c.model.kind = "md4"
  with pytest.raises(ValueError, match="prior.kind = 'conditional' needs config.model.kind"):
    config_lib.validate(c)


@pytest.mark.parametrize("field,value,message", [
    ("diffusion.block_size", -1, r"block_size = -1; must be an int >= 0"),
    ("diffusion.train_mask_rate_min", 0.5, r"train_mask_rate_min/max need "
     r"config.diffusion.block_size > 0"),
    ("model.latent_mode", "prefix", r"'prefix' is not supported with"),
])
def test_bad_block_configs_are_named(field, value, message):
  c = tiny_config("vmd")
  if field != "diffusion.train_mask_rate_min":
    c.diffusion.block_size = 1
  group, key = field.split(".")
  c[group][key] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_block_size_and_nfe_must_fit_the_data():
  c = tiny_config("md4")  # two tokens
  c.diffusion.block_size = 3
  with pytest.raises(ValueError, match=r"divides the sequence length 2, got block_size=3"):
    build.build_model(c, 4, 2)
  c.diffusion.block_size = 1
  c.eval.settings = "random:3"
  with pytest.raises(ValueError, match=r"random:3: NFE 3 is not a multiple of the 2 blocks"):
    evaluate.check_settings(c, build.build_model(c, 4, 2), 2)


@pytest.mark.parametrize("prior", ["mixture", "conditional"])
def test_block_vmd_runs_end_to_end(tmp_path, prior):
  """main with diffusion.block_size: trains, fits the per-block mixture prior (or
  trains the conditional one with the model), evaluates; the conditional run
  samples from the command line with its own prior and with N(0, I)."""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "vmd_jax.main", "--config=configs/synthetic_vmd.py",
          f"--workdir={workdir}", "--config.data.synthetic.table=d1",
          "--config.diffusion.block_size=2", "--config.diffusion.train_mask_rate_min=0.2",
          "--config.model.width=16", "--config.model.encoder_width=16",
          "--config.model.depth=1", "--config.model.encoder_depth=1",
          "--config.train.num_steps=6", "--config.train.batch_size=16",
          "--config.train.log_every=3", "--config.prior.components=2",
          "--config.prior.fit_samples=64", "--config.prior.fit_iters=5",
          "--config.eval.num_samples=100", "--config.eval.batch_size=100",
          "--config.eval.settings=random:2,top_prob:4", "--config.data.num_eval=50",
          f"--config.prior.kind={prior}"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((workdir / "eval.json").read_text())
  suffixes = ["", "/mixture"] if prior == "mixture" else [""]
  assert set(result["samples"]) == {f"{s}{x}" for s in ("random:2", "top_prob:4")
                                    for x in suffixes}
  if prior == "conditional":
    sample = [sys.executable, "-m", "vmd_jax", "sample", f"--workdir={workdir}",
              "--num=3", "--steps=2"]
    own, standard = (subprocess.run(sample + [f"--prior={p}"], cwd=REPO, capture_output=True,
                                    text=True, timeout=300) for p in ("run", "standard_normal"))
    assert own.returncode == standard.returncode == 0, own.stderr[-2000:] + standard.stderr[-2000:]
    assert own.stdout.count("\n\n") == standard.stdout.count("\n\n") == 3
  assert [result["samples"][s]["nfe"] for s in ("random:2", "top_prob:4")] == [2, 4]
  # An untrained 4-token model is near uniform: the bound is about log 10 per token.
  assert result["nelbo"]["eval_tokens"] == 200
  assert abs(result["nelbo"]["nelbo_nats_per_token"] - np.log(10)) < 0.3
