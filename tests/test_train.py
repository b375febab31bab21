"""The trainer: end to end through main, exact resume, multi-device equality, bad configs."""

import json
import os
import re
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from vmd_jax.trainer import build, checkpoint, config as config_lib, state as state_lib, train
from vmd_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(kind="vmd", steps=20):
  c = config_lib.load_config_file(os.path.join(REPO, "configs", f"synthetic_{kind}.py"))
  c.data.synthetic.table = "two_token_uniform"
  c.model.width = c.model.encoder_width = 16
  c.model.depth = c.model.encoder_depth = 1
  c.model.num_heads = c.model.encoder_heads = 2
  c.train.batch_size = 32
  c.train.num_steps = steps
  c.train.log_every = 5
  c.train.checkpoint_every = 10
  c.train.warmup_steps = 2
  c.prior.components = 4
  c.prior.fit_samples = 256
  c.prior.fit_iters = 10
  c.eval.num_samples = 200
  c.eval.batch_size = 100
  c.eval.settings = "random:1,random:2"
  c.data.num_eval = 200
  return c


def test_main_runs_end_to_end(tmp_path):
  """python -m vmd_jax.main on a tiny config: checkpoint, eval.json, figure, metrics."""
  workdir = tmp_path / "run"
  args = [sys.executable, "-m", "vmd_jax.main", "--config=configs/synthetic_vmd.py",
          f"--workdir={workdir}", "--config.data.synthetic.table=two_token_uniform",
          "--config.model.width=16", "--config.model.encoder_width=16",
          "--config.model.depth=1", "--config.model.encoder_depth=1",
          "--config.train.num_steps=12", "--config.train.batch_size=32",
          "--config.train.log_every=6", "--config.prior.components=4",
          "--config.prior.fit_samples=256", "--config.eval.num_samples=200",
          "--config.eval.settings=random:1", "--config.data.num_eval=100"]
  out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((workdir / "eval.json").read_text())
  assert set(result["samples"]) == {"random:1", "random:1/mixture"}
  for metrics in result["samples"].values():
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["nfe"] == 1
  # 100 sequences of 2 tokens, each weight 1.
  assert result["nelbo"]["eval_tokens"] == 200
  assert 0 < result["nelbo"]["nelbo_nats_per_token"] < 2 * np.log(10)
  assert (workdir / "checkpoints" / "12").is_dir()
  assert (workdir / "joint_random_1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert (workdir / "prior.npz").exists()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  # One line per logged step (steps 6 and 12), with its rate and ETA.
  assert [line.split("step ", 1)[1].split()[0] for line in out.stderr.splitlines()
          if " steps/s " in line] == ["6/12", "12/12"], out.stderr[-3000:]
  assert "ETA" in out.stderr


class Interrupt(Exception):
  pass


def final_params(workdir):
  c = tiny_config("md4")
  state = state_lib.init_state(*_model_and_tx(c), jax.random.key(0), np.zeros((1, 2), np.int32))
  return checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).restore(state)


def _model_and_tx(c):
  data = build.build_dataset(c)
  return build.build_model(c, data.vocab_size, data.seq_len), state_lib.make_optimizer(c.train)


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
  c = tiny_config("md4")
  c.eval.settings = "random:1"
  train.train_and_evaluate(c, str(tmp_path / "straight"))

  real_batch = synthetic.ProbabilityTable.train_batch
  def dying_batch(self, step, batch_size, rows=None):
    if step == 13:
      raise Interrupt("killed")
    return real_batch(self, step, batch_size, rows)
  monkeypatch.setattr(synthetic.ProbabilityTable, "train_batch", dying_batch)
  with pytest.raises(Interrupt):
    train.train_and_evaluate(c, str(tmp_path / "resumed"))
  assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["10"]
  monkeypatch.setattr(synthetic.ProbabilityTable, "train_batch", real_batch)
  train.train_and_evaluate(c, str(tmp_path / "resumed"))

  a, b = final_params(tmp_path / "straight"), final_params(tmp_path / "resumed")
  assert int(a.step) == int(b.step) == 20
  chex.assert_trees_all_equal(a, b)  # structure too: a missing leaf fails


def test_corrupt_only_checkpoint_is_moved_aside_and_the_run_starts_over(tmp_path, caplog):
  """Garbage in the only checkpoint: it is moved to checkpoints_corrupt/ with a
  warning, not deleted, and the run starts over to the same final state."""
  c = tiny_config("md4", steps=10)
  c.eval.settings = "random:1"
  train.train_and_evaluate(c, str(tmp_path))
  before = final_params(tmp_path)
  step_dir = tmp_path / "checkpoints" / "10"
  damaged = []
  for root, _, files in os.walk(step_dir):
    for f in files:
      if "manifest" in f or f.endswith(".ocdbt") or "d" == os.path.basename(root):
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
        damaged.append(os.path.relpath(os.path.join(root, f), step_dir))
  caplog.set_level("INFO")
  train.train_and_evaluate(c, str(tmp_path))
  assert re.search(r"Checkpoint step 10 in \S+/checkpoints could not be restored \(.*\): "
                   r"moved to \S+/checkpoints_corrupt/10; trying the step before it",
                   caplog.text), caplog.text
  assert f"No checkpoint in {tmp_path}/checkpoints: starting at step 0" in caplog.text
  for name in damaged:
    assert (tmp_path / "checkpoints_corrupt" / "10" / name).read_bytes() == b"garbage"
  after = final_params(tmp_path)
  chex.assert_trees_all_equal(before, after)  # structure too: a missing leaf fails


EIGHT_DEVICES = r"""
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
import jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from test_train import tiny_config, _model_and_tx
from vmd_jax.trainer import build, sharding, state as state_lib, train
assert jax.device_count() == 8
c = tiny_config("vmd")
model, tx = _model_and_tx(c)
data = build.build_dataset(c)
x0 = data.train_batch(0, 32)["x0"]
losses = []
for devices in (jax.devices()[:1], jax.devices()):
  mesh = sharding.make_mesh(c.mesh, devices)
  rep, dat = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state = jax.jit(lambda k: state_lib.init_state(model, tx, k, x0[:1]), out_shardings=rep)(jax.random.key(0))
  step = jax.jit(train.make_train_step(model, tx, 0, 0.9), in_shardings=(rep, dat), out_shardings=(rep, rep))
  for i in range(3):
    state, m = step(state, jax.device_put(data.train_batch(i, 32)["x0"], dat))
  losses.append(float(m["loss"]))
  print(len(devices), "devices: loss", losses[-1], "sharding", state.params["denoiser"]["params"]["head"]["kernel"].sharding)
np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
print("OK")
"""


def test_train_step_on_eight_devices_matches_one(tmp_path):
  script = tmp_path / "eight.py"
  script.write_text(EIGHT_DEVICES)
  out = subprocess.run([sys.executable, str(script), REPO], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]


@pytest.mark.parametrize("field,value,message", [
    ("model.kind", "gpt", r"config.model.kind = 'gpt'; accepted values: \['md4', 'vmd'\]"),
    ("diffusion.schedule", "cos", r"config.diffusion.schedule = 'cos'; accepted"),
    ("train.num_steps", 0, r"config.train.num_steps = 0; must be > 0"),
    ("eval.settings", "top_prob:0", r"ORDER:NFE with NFE >= 1"),
    ("eval.settings", "greedy:4", r"'greedy'; accepted values"),
    ("model.width", 31, r"config.model.width = 31 is not divisible by config.model.num_heads"),
    ("train.b1", 1.0, r"config.train.b1 = 1.0; must be in \[0, 1\)"),
    ("train.b2", -0.5, r"config.train.b2 = -0.5; must be in \[0, 1\)"),
    ("data.num_eval", -5, r"config.data.num_eval = -5; must be >= 0"),
    ("model.mlp_ratio", 0.01, r"mlp_ratio = 0.01 leaves no MLP hidden unit at width 16"),
    ("prior.fit_samples", 3, r"config.prior.fit_samples = 3 is fewer than "
                             r"config.prior.components = 4"),
])
def test_bad_config_values_are_named(field, value, message):
  c = tiny_config()
  group, key = field.split(".")
  c[group][key] = value
  with pytest.raises(ValueError, match=message):
    config_lib.validate(c)


def test_unknown_config_keys_fail_at_once(tmp_path):
  c = tiny_config()
  c.train.unlock()
  c.train.num_stepz = 5
  with pytest.raises(ValueError, match=r"unknown config key 'train.num_stepz'"):
    config_lib.validate(c)
  out = subprocess.run([sys.executable, "-m", "vmd_jax.main", "--config=configs/synthetic_md4.py",
                        f"--workdir={tmp_path}", "--config.train.num_stepz=5"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "num_stepz" in out.stderr
  assert not os.listdir(tmp_path)  # nothing written


def test_resume_with_another_config_is_refused_before_anything_is_written(tmp_path):
  """A workdir with checkpoints resumes only with its own config, outside
  ``RESUME_MAY_CHANGE``: another model or data would find every checkpoint
  unreadable (moved aside as corrupt) or train on other data without a word."""
  from vmd_jax.trainer import io, load
  c = tiny_config("md4")
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  io.write_json(tmp_path / "config.json", c.to_dict())
  saved = (tmp_path / "config.json").read_text()
  other = c.copy_and_resolve_references()
  other.seed, other.model.width, other.train.num_steps = 7, 32, 40
  with pytest.raises(train.BadSetup, match=r"holds checkpoints of a run with another config: "
                     r"model.width: 16 -> 32; seed: 0 -> 7; resume it with its own config"):
    train.train_and_evaluate(other, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == saved
  assert sorted(os.listdir(tmp_path)) == [".lock", "checkpoints", "config.json"]
  assert os.listdir(tmp_path / "checkpoints") == ["10"]
  # What an operator changes when resuming: length, learning rate, evaluation, devices.
  resumed = c.copy_and_resolve_references()
  resumed.train.num_steps, resumed.train.lr, resumed.eval.settings = 40, 1e-4, "top_prob:2"
  resumed.mesh.fsdp, resumed.model.attention, resumed.prior.components = 2, "einsum", 8
  assert config_lib.resume_changes(load.load_config(tmp_path), resumed) == []


@pytest.mark.parametrize("field", ["npy_path", "schedule_lr"])
def test_resume_with_a_state_of_another_shape_is_refused(tmp_path, field):
  """Fields a resumed run may change but that change the saved state's shape: a
  new ``data.synthetic.npy_path`` holding a table of another V, and a GenMD4 schedule rate
  turned on (its own optimizer state). Refused in one line, the checkpoints left
  where they are (they used to be moved aside as corrupt and the run restarted)."""
  from vmd_jax.trainer import io
  c = tiny_config("md4")
  io.write_json(tmp_path / "config.json", c.to_dict())
  io.write_json(tmp_path / "data_shape.json", {"vocab_size": 10, "seq_len": 2})
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  if field == "npy_path":
    c.data.synthetic.npy_path = str(tmp_path / "v12.npy")
    np.save(c.data.synthetic.npy_path, np.full((12, 12), 1 / 144))
    message = r"data \(V, N\): \(10, 2\) -> \(12, 2\)"
  else:
    c.diffusion.kind, c.eval.settings = "genmd4", "ancestral:2"
    io.write_json(tmp_path / "config.json", c.to_dict())
    c.train.schedule_lr = 0.05
    message = r"train.schedule_lr: 0.0 -> 0.05 \(an optimizer of another layout\)"
  with pytest.raises(train.BadSetup, match="holds checkpoints of a run with another config: "
                     + message):
    train.train_and_evaluate(c, str(tmp_path))
  assert os.listdir(tmp_path / "checkpoints") == ["10"]
  assert not (tmp_path / "checkpoints_corrupt").exists()


@pytest.mark.parametrize("change,message", [
    ({"data.synthetic.table": "d3"}, r"unknown synthetic dataset 'd3'"),
    ({"diffusion.block_size": 3}, r"block_size must be an int >= 1 that divides"),
    ({"train.batch_size": 3, "mesh.data": 2}, r"config.mesh.data x config.mesh.fsdp must be"),
])
def test_bad_setup_is_one_error_before_config_json(tmp_path, change, message):
  from vmd_jax.trainer import cli
  c = tiny_config("md4")
  c.update_from_flattened_dict(change)
  with pytest.raises(train.BadSetup, match=message) as e:
    train.train_and_evaluate(c, str(tmp_path / "run"))
  assert cli._run_ended(e.value) == 2  # the command line: one line, exit 2
  assert os.listdir(tmp_path / "run") == [".lock"]
  (tmp_path / "file").write_text("")
  with pytest.raises(train.BadSetup, match="Not a directory"):
    train.train_and_evaluate(tiny_config("md4"), str(tmp_path / "file" / "run"))


def test_empty_workdir_is_refused(tmp_path):
  out = subprocess.run([sys.executable, "-m", "vmd_jax.main", "--config=synthetic_md4",
                        "--workdir="], cwd=tmp_path, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2 and out.stderr.strip().endswith(
      "error: --workdir is empty (an unset variable?); name a directory"), out.stderr
  assert not os.listdir(tmp_path)


def test_a_resumed_run_fits_its_mixture_prior_again(tmp_path):
  """prior.npz records the step and settings it was fitted for: a run resumed for
  more steps, or with other prior settings, fits it again to its final EMA
  parameters (it used to keep the first run's), and a reader of an older step
  refits without saving."""
  from vmd_jax.trainer import evaluate, load
  c, workdir = tiny_config("vmd", steps=4), tmp_path / "run"
  c.train.checkpoint_every = 4
  train.train_and_evaluate(c, str(workdir))
  first = dict(np.load(workdir / "prior.npz"))
  assert (int(first["step"]), first["means"].shape) == (4, (4, 2))
  c.train.num_steps, c.prior.components = 8, 3
  train.train_and_evaluate(c, str(workdir))
  second = dict(np.load(workdir / "prior.npz"))
  assert (int(second["step"]), int(second["components"]), second["means"].shape) == (8, 3, (3, 2))
  model, params, saved_config = load.load(str(workdir))
  dataset = build.build_dataset(saved_config)
  refit = evaluate.fit_prior(model, params, dataset, saved_config, tmp_path / "elsewhere",
                             save=False, step=8)
  np.testing.assert_allclose(refit.means, second["means"], rtol=1e-5, atol=1e-6)
  # The EMA parameters of step 4 are not those the file was fitted to: refitted, not saved.
  run = load.open_run(str(workdir))
  old_params, _ = load.restore_ema(str(workdir), run, step=4)
  again = evaluate.fit_prior(run.model, old_params, None, run.config, str(workdir), save=False,
                             step=4)
  assert again.means.shape == (3, 2) and not np.allclose(again.means, second["means"])
  np.testing.assert_array_equal(np.load(workdir / "prior.npz")["means"], second["means"])


def test_a_resume_past_num_steps_says_so_and_evaluates_the_newest_step(tmp_path, caplog):
  """train.num_steps lowered below the newest checkpoint: nothing is trained, a
  warning names both, and the evaluation is of the newest step (eval.json's step)."""
  import logging as py_logging
  c, workdir = tiny_config("md4", steps=4), tmp_path / "run"
  c.train.checkpoint_every = 4
  train.train_and_evaluate(c, str(workdir))
  c.train.num_steps = 2
  with caplog.at_level(py_logging.WARNING):
    result = train.train_and_evaluate(c, str(workdir))
  assert "The newest checkpoint, step 4, is past train.num_steps = 2: nothing to train; " \
         "evaluating step 4" in caplog.text
  assert result["step"] == 4 and sorted(os.listdir(workdir / "checkpoints")) == ["4"]


def test_checkpoints_of_another_layout_are_refused_not_moved_aside(tmp_path):
  """Checkpoints written by another model (as another vmd_jax version would) under
  an identical config.json: the step's metadata gives other shapes, so the run
  stops in one line (exit 2) and leaves them in place (they used to be moved to
  checkpoints_corrupt/ and the run restarted at step 0)."""
  from vmd_jax.trainer import cli, io
  c, workdir = tiny_config("md4", steps=2), tmp_path / "run"
  c.train.checkpoint_every = 2
  train.train_and_evaluate(c, str(workdir))
  c.model.width = 32  # the same config file, another network
  io.write_json(workdir / "config.json", config_lib.with_absolute_paths(c).to_dict())
  with pytest.raises(train.BadSetup, match=r"checkpoint step 2 in .* holds a state of another "
                     r"layout \(.*only here: \[.*32.*\]\): another model, optimizer or "
                     r"vmd_jax version wrote it") as e:
    train.train_and_evaluate(c, str(workdir))
  assert cli._run_ended(e.value) == 2
  assert os.listdir(workdir / "checkpoints") == ["2"]
  assert not (workdir / "checkpoints_corrupt").exists()
