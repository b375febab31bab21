"""MDM-Prime in the model and the trainer: the digit embedding, MaskedDiffusion's
loss and sampler going through ``vmd_jax.prime``, and tiny end-to-end runs."""

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import block, prime
from vmd_jax.networks import Denoiser, adapters
from vmd_jax.networks.denoiser import DigitEmbed, digit_widths
from vmd_jax.trainer import build, config as config_lib, train
from vmd_jax.trainer.load import load

REPO = Path(__file__).resolve().parents[1]
TEXT8_FIXTURE = next((REPO / "tests" / "data" / "text8").glob("*.txt"))


def tiny(kind="md4", steps=4, block_size=0, digits=2):
  c = config_lib.load_config_file(str(REPO / "configs" / f"synthetic_{kind}.py"))
  c.data.synthetic.table = "d1"  # V = 10: l = 2 gives base 4, codes 10..15 invalid
  c.diffusion.prime_digits = digits
  c.diffusion.block_size = block_size
  c.model.width = c.model.encoder_width = 16
  c.model.depth = c.model.encoder_depth = 1
  c.model.num_heads = c.model.encoder_heads = 2
  c.train.batch_size = 16
  c.train.num_steps = steps
  c.train.warmup_steps = 1
  c.train.log_every = steps
  c.train.checkpoint_every = steps
  c.prior.kind = "standard_normal"
  c.eval.num_samples = 64
  c.eval.batch_size = 64
  c.eval.settings = "random:2,ancestral:4"
  c.data.num_eval = 32
  return config_lib.validate(c)


# ----------------------------------------------------------------------------
# The network's digit embedding.


def test_digit_embedding_shapes_and_widths():
  assert digit_widths(16, 3) == [6, 5, 5] and digit_widths(16, 1) == [16]
  embed = DigitEmbed(vocab_size=27, num_digits=3, width=16)  # base 3: tables of 4 rows
  digits = jnp.array([[[0, 1, 2], [3, 3, 3]]])
  params = embed.init(jax.random.key(0), digits)
  assert {k: v["embedding"].shape for k, v in params["params"].items()} == {
      "digit_0": (4, 6), "digit_1": (4, 5), "digit_2": (4, 5)}
  out = embed.apply(params, digits)
  assert out.shape == (1, 2, 16)
  tables = [params["params"][f"digit_{k}"]["embedding"] for k in range(3)]
  np.testing.assert_array_equal(out[0, 0], jnp.concatenate([tables[k][k] for k in range(3)]))
  with pytest.raises(ValueError, match=r"x_t must be digits \[B, N, 3\], got shape \(1, 2\)"):
    embed.apply(params, digits[..., 0])

  denoiser = Denoiser(vocab_size=27, width=16, depth=1, num_heads=2, prime_digits=3)
  d_params = denoiser.init(jax.random.key(1), digits, jnp.zeros(1))
  logits = denoiser.apply(d_params, digits, jnp.zeros(1))
  assert logits.shape == (1, 2, 27) and not np.any(logits)  # zero head: log V at init
  assert "digit_embed" in d_params["params"] and "embed" not in d_params["params"]


def test_one_digit_embedding_is_the_token_embedding():
  """l = 1: one (V+1)-row table of width W, the plain embedding's behaviour."""
  v, w = 7, 12
  tokens = jnp.array([[0, 3, 7, 6]])  # 7 = the mask
  table = jax.random.normal(jax.random.key(2), (v + 1, w))
  plain = nn.Embed(v + 1, w).apply({"params": {"embedding": table}}, tokens)
  digit = DigitEmbed(v, 1, w).apply({"params": {"digit_0": {"embedding": table}}},
                                    tokens[..., None])
  np.testing.assert_array_equal(digit, plain)
  # And prime_digits = 1 leaves the Denoiser reading tokens with its "embed" table.
  params = Denoiser(vocab_size=v, width=w, depth=1, num_heads=2).init(
      jax.random.key(0), tokens, jnp.zeros(1))
  assert "embed" in params["params"] and "digit_embed" not in params["params"]


# ----------------------------------------------------------------------------
# MaskedDiffusion routes through vmd_jax.prime.


def _perturbed(params, key):
  """Random params everywhere (the zero head would make every logit 0)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [l + 0.3 * jax.random.normal(k, l.shape)
                                   for l, k in zip(leaves, keys)])


@pytest.mark.parametrize("block_size", [0, 2])
def test_model_loss_is_the_prime_nelbo(block_size):
  config = tiny(block_size=block_size)
  model = build.build_model(config, 10, 4)
  code = model.prime_code
  assert (code.vocab_size, code.num_digits, code.base) == (10, 2, 4)
  x0 = jnp.array([[0, 1, 2, 3], [9, 0, 1, 2], [5, 6, 7, 8]], jnp.int32)
  params = _perturbed(model.init(jax.random.key(0), x0), jax.random.key(1))
  rng = np.random.default_rng(0)
  noise = jnp.asarray(rng.random((3, 4, 2)), jnp.float32)
  t = jnp.asarray(rng.random((3, 2) if block_size else (3,)), jnp.float32)
  got = jax.jit(lambda p: model.loss(p, x0, jax.random.key(5), t=t, noise=noise))(params)

  @jax.jit
  def want_of(p):
    if block_size:
      fn, _ = adapters.block_denoiser_fns(model.denoiser, p["denoiser"])
      return prime.block_nelbo_terms(fn, x0, None, model.schedule, code, 2, t=t, noise=noise)
    fn = adapters.denoise_fn(model.denoiser, p["denoiser"])
    return prime.nelbo_terms(fn, x0, None, model.schedule, code, t=t, noise=noise)

  want = want_of(params)
  for name in ("loss", "nelbo", "diffusion", "per_token"):
    np.testing.assert_allclose(got[name], want["nelbo" if name == "loss" else name],
                               rtol=2e-5, err_msg=name)
  assert float(jnp.min(got["diffusion"])) > 0.0  # a real, non-trivial loss


def test_block_prime_nelbo_with_one_digit_is_bd3lm():
  """l = 1: the block Prime NELBO equals ``block.block_nelbo_terms`` on the same draw."""
  v, length, bs = 6, 6, 3
  code = prime.DigitCode(v, 1)
  den = Denoiser(vocab_size=v, width=16, depth=1, num_heads=2)
  x0 = jnp.array([[0, 5, 2, 3, 3, 1], [4, 4, 0, 1, 2, 5]], jnp.int32)
  params = _perturbed(den.init(jax.random.key(0), x0, jnp.zeros(2)), jax.random.key(3))
  fn, _ = adapters.block_denoiser_fns(den, params)
  digit_fn = lambda x, *a, **kw: fn(x[..., 0], *a, **kw)
  rng = np.random.default_rng(1)
  t = jnp.asarray(rng.random((2, 2)), jnp.float32)
  noise = jnp.asarray(rng.random((2, length)), jnp.float32)
  sched = build.build_schedule(tiny())

  @jax.jit
  def both():  # one compile, not hundreds of eager ops
    return [(prime.block_nelbo_terms(digit_fn, x0, None, sched, code, bs, t=t,
                                     noise=noise[..., None], num_steps=steps),
             block.block_nelbo_terms(fn, x0, None, sched, bs, t=t, noise=noise,
                                     num_steps=steps)) for steps in (None, 4)]

  for ours, theirs in both():
    for name in ("nelbo", "diffusion", "reconstruction", "prior", "per_token", "per_block"):
      np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_block_sampler_with_and_without_the_cache_and_prompts():
  """Blocks read the clean blocks from the packed-digit KV cache: the same tokens as
  recomputing them; prompts kept; every token valid (V = 10, 6 invalid codes)."""
  config = tiny(block_size=2)
  model = build.build_model(config, 10, 4)
  x0 = jnp.zeros((1, 4), jnp.int32)
  params = _perturbed(model.init(jax.random.key(0), x0), jax.random.key(4))
  x_init = jnp.tile(jnp.array([[10, 7, 10, 10]], jnp.int32), (64, 1))
  draw = jax.jit(lambda p, cache: model.sample(p, jax.random.key(9), x_init, 4, "random",
                                               use_cache=cache), static_argnums=1)
  (a, nfe_a), (b, nfe_b) = draw(params, True), draw(params, False)
  np.testing.assert_array_equal(a, b)
  assert int(nfe_a) == int(nfe_b) <= 4
  assert np.all(np.asarray(a[:, 1]) == 7) and 0 <= int(a.min()) and int(a.max()) < 10
  assert len(np.unique(np.asarray(a[:, 0]))) > 1  # drawn, not a constant


def test_block_sampler_reads_only_the_cache_prefix_it_needs():
  """``cache_segments`` (shared with ``block.block_sample`` through
  ``block.blockwise``): 4 blocks in S = 1, 2 or 4 runs, each reading only the
  cache prefix its last block needs, draw the same digits as recomputing the
  prefix, with the same number of calls."""
  config = tiny(block_size=2)
  model = build.build_model(config, 10, 8)
  params = _perturbed(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32)),
                      jax.random.key(4))
  denoise, prefill = adapters.block_denoiser_fns(model.denoiser, params["denoiser"])
  code = model.prime_code
  x_init = code.tokens_to_digits(jnp.tile(jnp.array([[10, 7, 10, 10, 3, 10, 10, 10]]),
                                          (32, 1)))
  draw = jax.jit(lambda key, cache, segments: prime.block_sample(
      denoise, prefill, key, x_init, 2, 2, model.schedule, code, "top_prob",
      use_cache=cache, cache_segments=segments, return_nfe=True), static_argnums=(1, 2))
  recomputed, nfe = draw(jax.random.key(9), False, 1)
  assert len(np.unique(np.asarray(recomputed[:, 0]), axis=0)) > 1  # drawn, not a constant
  for segments in (1, 2, 4):
    cached, cached_nfe = draw(jax.random.key(9), True, segments)
    np.testing.assert_array_equal(cached, recomputed, err_msg=f"cache_segments={segments}")
    assert int(cached_nfe) == int(nfe) == 1 + 2 + 1 + 2  # one masked token: one call
  with pytest.raises(ValueError, match="cache_segments must be an int >= 1, got 0"):
    draw(jax.random.key(9), True, 0)


# ----------------------------------------------------------------------------
# End to end through train_and_evaluate.


# MD4 end to end is test_text8_fixture_with_prime (no blocks); MD4 with blocks goes
# through MaskedDiffusion's loss and sampler in the tests above. Each case here costs
# a full compile of the train step, evaluation and samplers (about 45 CPU seconds).
@pytest.mark.parametrize("kind,block_size", [("vmd", 0), ("vmd", 2)])
def test_train_and_evaluate_with_prime(tmp_path, kind, block_size):
  config = tiny(kind, block_size=block_size)
  result = train.train_and_evaluate(config, str(tmp_path))
  nelbo = result["nelbo"]
  assert nelbo["eval_tokens"] == 32 * 4
  # Near the start of training the bound sits near log V per token.
  assert 0.5 * math.log(10) < nelbo["nelbo_nats_per_token"] < 3 * math.log(10)
  assert set(result["samples"]) == {"random:2", "ancestral:4"}
  for metrics in result["samples"].values():  # tokens back: the synthetic metric ran
    assert metrics["num_samples"] == 64 and 0.0 <= metrics["accuracy"] <= 1.0
    assert 1 <= metrics["nfe"] <= 4
  assert json.loads((tmp_path / "eval.json").read_text())["nelbo"] == nelbo
  # The restored run is a Prime model whose loss is the Prime NELBO.
  model, params, restored = load(str(tmp_path))
  assert restored.diffusion.prime_digits == 2 and model.prime_code.base == 4
  x0 = jnp.array([[3, 4, 5, 6]], jnp.int32)
  terms = jax.jit(model.loss)(params, x0, jax.random.key(0))
  # Each token's share of the bound, over the 4 tokens, sums to the sequence's NELBO.
  assert terms["per_token"].shape == (1, 4)
  np.testing.assert_allclose(terms["per_token"].sum(-1), terms["nelbo"], rtol=1e-5)
  assert float(terms["nelbo"][0]) > 0
  if kind == "vmd":
    np.testing.assert_allclose(terms["bound"], terms["nelbo"] + terms["kl"], rtol=1e-6)


def test_text8_fixture_with_prime(tmp_path):
  """The text8 pipeline with Prime (l = 2 on 27 characters, base 6): bits per
  character from the Prime bound, and decoded text samples."""
  c = config_lib.load_config_file(str(REPO / "configs" / "text8_prime.py"))
  assert c.diffusion.prime_digits == 2
  c.data.text8.source = "local"
  c.data.text8.path = str(TEXT8_FIXTURE)
  c.data.text8.data_dir = str(tmp_path / "tfds")
  c.data.seq_len = 16
  c.model.width, c.model.depth, c.model.num_heads, c.model.dropout = 16, 1, 2, 0.0
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 8, 3, 1
  c.train.log_every = c.train.checkpoint_every = 3
  c.eval.batch_size, c.eval.nelbo_samples, c.eval.settings = 64, 1, "top_prob:4"
  c.eval.prime_unit = "digit"
  units = []

  def spy(*args, **kwargs):  # eval.prime_unit reaches Prime's sampler
    units.append(kwargs.get("unit"))
    return sample(*args, **kwargs)

  sample = prime.sample
  with pytest.MonkeyPatch.context() as m:
    m.setattr(prime, "sample", spy)
    result = train.train_and_evaluate(config_lib.validate(c), str(tmp_path / "run"))
  assert units and set(units) == {"digit"}
  bpc = result["nelbo"]["nelbo_bits_per_token"]
  assert math.log2(27) * 0.5 < bpc < math.log2(27) * 3
  text = result["samples"]["top_prob:4"]["text"]
  assert text and all(set(s) <= set("abcdefghijklmnopqrstuvwxyz ") for s in text)


def test_config_checks_prime_digits():
  c = tiny()
  c.eval.prime_unit = "cell"
  with pytest.raises(ValueError, match=r"config.eval.prime_unit = 'cell'"):
    config_lib.validate(c)
  c = tiny()
  c.diffusion.prime_digits = 0
  with pytest.raises(ValueError, match=r"config.diffusion.prime_digits = 0; must be an int >= 1"):
    config_lib.validate(c)
  c = tiny("vmd")
  c.model.encoder_sees_xt = True
  with pytest.raises(ValueError, match="prime_digits > 1 needs config.model.encoder_sees_xt"):
    config_lib.validate(c)
