"""GenMD4 in the trainer: config checks, the optimizer's schedule partition, the
model against MD4 at equal exponents, and end-to-end runs whose learned exponents
move, are logged and come back from the checkpoint."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import genmd4
from vmd_jax.trainer import build, checkpoint, config as config_lib, state as state_lib, train
from vmd_jax.trainer.load import load

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT8_FIXTURE = os.path.join(REPO, "tests", "data", "text8", "sqlite3_h_comments.txt")


def tiny_config(steps=10):
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_md4.py"))
  c.data.synthetic.table = "two_token_uniform"   # V = 10, N = 2
  c.diffusion.kind = "genmd4"
  c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
  c.train.batch_size = 32
  c.train.num_steps = steps
  c.train.warmup_steps = 2
  c.train.log_every = 5
  c.train.checkpoint_every = 5
  c.eval.num_samples = 200
  c.eval.batch_size = 100
  c.eval.settings = "ancestral:2"
  c.data.num_eval = 100
  return c


def model_of(c):
  dataset = build.build_dataset(c)
  return build.build_model(c, dataset.vocab_size, dataset.seq_len)


@pytest.mark.parametrize("field,value,message", [
    ("model.kind", "vmd", r"'genmd4' needs config.model.kind = 'md4', got 'vmd'"),
    ("diffusion.block_size", 2, r"'genmd4' needs config.diffusion.block_size = 0, got 2"),
    ("diffusion.loss_steps", 8, r"'genmd4' needs config.diffusion.loss_steps = 0"),
    ("eval.settings", "ancestral:2,top_prob:4", r"the 'ancestral' order .* got 'top_prob:4'"),
    ("diffusion.genmd4_power_init", 0.0, r"config.diffusion.genmd4_power_init = 0.0; must be > 0"),
    ("train.schedule_lr", -1.0, r"config.train.schedule_lr = -1.0; must be >= 0"),
])
def test_genmd4_config_refusals_name_the_field(field, value, message):
  c = tiny_config()
  group, key = field.split(".")
  c[group][key] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_schedule_lr_needs_genmd4():
  c = tiny_config()
  c.diffusion.kind = "md4"
  c.eval.settings = "random:2"
  c.train.schedule_lr = 1e-2
  with pytest.raises(ValueError, match=r"config.train.schedule_lr = 0.01 needs "
                                       r"config.diffusion.kind = 'genmd4'"):
    config_lib.validate(c)


def test_model_sample_refuses_other_orders():
  c = config_lib.validate(tiny_config())
  model = model_of(c)
  params = model.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
  with pytest.raises(ValueError, match=r"'ancestral' order only, got 'top_prob:2' in sample"):
    model.sample(params, jax.random.key(0), jnp.full((1, 2), 10), 2, "top_prob")


@pytest.mark.parametrize("power_init", [1.0, 2.5])
def test_equal_exponents_evaluate_as_md4(power_init):
  """At initialisation every exponent is power_init: the GenMD4 model's evaluation
  terms equal MD4's with the polynomial schedule t^k, k = power_init, for the same
  t and masking noise and the same denoiser parameters."""
  c = tiny_config()
  c.diffusion.genmd4_power_init = power_init
  gen = model_of(config_lib.validate(c))
  c.diffusion.kind = "md4"
  c.diffusion.schedule, c.diffusion.schedule_k = "polynomial", power_init
  md4 = model_of(c)
  x0 = jnp.asarray(np.random.default_rng(0).integers(0, 10, (6, 2)), jnp.int32)
  params = gen.init(jax.random.key(1), x0)
  np.testing.assert_allclose(genmd4.exponents(gen.schedule_params(params)),
                             np.full(10, power_init), rtol=1e-6)
  t = jnp.linspace(0.05, 0.95, 6)
  noise = jax.random.uniform(jax.random.key(2), x0.shape)
  got = gen.loss(params, x0, jax.random.key(3), t=t, noise=noise)
  want = md4.loss({"denoiser": params["denoiser"]}, x0, jax.random.key(3), t=t, noise=noise)
  for name in ("nelbo", "diffusion", "reconstruction", "prior", "loss"):
    np.testing.assert_allclose(got[name], want[name], rtol=2e-5, atol=1e-6, err_msg=name)


def _one_step(c, x0):
  model = model_of(c)
  tx = state_lib.make_optimizer(c.train)
  state = state_lib.init_state(model, tx, jax.random.key(0), x0)
  step = jax.jit(train.make_train_step(model, tx, c.seed, c.train.ema_decay))
  new_state, metrics = step(state, x0)
  delta = jax.tree.map(lambda a, b: np.asarray(a - b), new_state.params, state.params)
  return state, new_state, metrics, delta


def test_schedule_parameters_get_gradients_and_their_own_learning_rate():
  """One Adam step from zero moments moves every parameter with a non-zero
  gradient by its peak learning rate (|update| = lr |g| / (|g| + 1e-8)): the
  exponents by train.schedule_lr, the network by train.lr; without schedule_lr
  both by train.lr."""
  c = tiny_config()
  c.train.warmup_steps, c.train.grad_clip, c.train.weight_decay = 0, 0.0, 0.0
  c.train.lr, c.train.schedule_lr = 1e-3, 5e-2
  x0 = jnp.asarray(np.random.default_rng(0).integers(0, 10, (32, 2)), jnp.int32)
  for schedule_lr, want in ((5e-2, 5e-2), (0.0, 1e-3)):
    c.train.schedule_lr = schedule_lr
    state, new_state, metrics, delta = _one_step(config_lib.validate(c), x0)
    raw_w = np.abs(delta["schedule"]["raw_w"])
    assert np.all(np.isfinite(raw_w)) and np.count_nonzero(raw_w) >= 8, raw_w
    np.testing.assert_allclose(raw_w[raw_w > 0], want, rtol=1e-3)
    net = np.concatenate([np.abs(d).ravel() for d in jax.tree.leaves(delta["denoiser"])])
    assert np.isclose(net.max(), 1e-3, rtol=1e-3)
    w = np.asarray(genmd4.exponents(genmd4.GenMD4Params(**new_state.params["schedule"])))
    np.testing.assert_allclose([metrics[f"genmd4/w_{v}"] for v in range(10)], w, rtol=1e-6)


def test_main_end_to_end_exponents_move_logged_and_restored(tmp_path):
  """python -m vmd_jax.main with diffusion.kind=genmd4: the exponents move from
  1, appear in the logged metrics and eval.json, and the checkpoint carries them
  (EMA via vmd_jax.load equals eval.json; the restored TrainState's parameters
  are the ones a fresh init would not have)."""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "vmd_jax.main", "--config=configs/synthetic_md4.py",
          f"--workdir={workdir}", "--config.data.synthetic.table=two_token_uniform",
          "--config.diffusion.kind=genmd4", "--config.train.schedule_lr=0.05",
          "--config.model.width=16", "--config.model.depth=1", "--config.model.num_heads=2",
          "--config.train.num_steps=20", "--config.train.batch_size=32",
          "--config.train.warmup_steps=2", "--config.train.log_every=10",
          "--config.train.checkpoint_every=10", "--config.eval.num_samples=200",
          "--config.eval.settings=ancestral:2", "--config.data.num_eval=100"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  # The exponents and the RLOO score term reach TensorBoard at each logged step.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  assert [e.step for e in events.Scalars("genmd4/w_9")] == [10, 20]
  assert [e.step for e in events.Scalars("score")] == [10, 20]
  result = json.loads((workdir / "eval.json").read_text())
  assert result["step"] == 20  # the final step's EMA parameters
  w_eval = np.array([result["schedule"][f"genmd4/w_{v}"] for v in range(10)])
  assert np.all(w_eval > 0) and np.max(np.abs(w_eval - 1.0)) > 0.05, w_eval
  assert result["samples"]["ancestral:2"]["nfe"] <= 2
  assert 0 < result["nelbo"]["nelbo_nats_per_token"] < 2 * math.log(10)

  model, params, config = load(str(workdir))
  assert model.learn_schedule and config.diffusion.kind == "genmd4"
  np.testing.assert_allclose(genmd4.exponents(model.schedule_params(params)), w_eval,
                             rtol=1e-6)

  c = config_lib.validate(config)
  tx = state_lib.make_optimizer(c.train)
  fresh = state_lib.init_state(model, tx, jax.random.key(0), np.zeros((1, 2), np.int32))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  restored = ckpt.restore(fresh)
  ckpt.close()
  assert int(restored.step) == 20
  raw_w = np.asarray(restored.params["schedule"]["raw_w"])
  assert not np.allclose(raw_w, fresh.params["schedule"]["raw_w"])
  # Adam's moments of the exponents are saved too (partitioned optimizer state).
  moments = [np.asarray(x) for x in jax.tree.leaves(restored.opt_state) if np.shape(x) == (10,)]
  assert any(np.any(m != 0) for m in moments)


def test_text8_genmd4_config_trains_on_the_fixture(tmp_path):
  """configs/text8_genmd4.py at a tiny size on the text8-format fixture: 27
  exponents in eval.json, a BPC near log2(27) for an untrained model, and
  ancestral samples in the alphabet."""
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "text8_genmd4.py"))
  assert c.diffusion.kind == "genmd4" and c.diffusion.genmd4_power_init == 1.0
  c.model.width, c.model.depth, c.model.num_heads = 16, 1, 2
  c.train.batch_size, c.train.num_steps, c.train.warmup_steps = 8, 4, 2
  c.train.log_every = c.train.checkpoint_every = 4
  c.data.text8.source = "local"
  c.data.text8.path = TEXT8_FIXTURE
  c.data.text8.data_dir = str(tmp_path / "tfds")
  c.data.seq_len = 32
  c.eval.batch_size = 128
  c.eval.settings = "ancestral:8"
  train.train_and_evaluate(c, str(tmp_path / "run"))
  result = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert sorted(result["schedule"]) == sorted(f"genmd4/w_{v}" for v in range(27))
  assert abs(result["nelbo"]["nelbo_bits_per_token"] - math.log2(27)) < 0.5
  texts = result["samples"]["ancestral:8"]["text"]
  assert len(texts) == 4 and all(len(t) == 32 for t in texts)
  assert all(set(t) <= set("abcdefghijklmnopqrstuvwxyz ") for t in texts)
