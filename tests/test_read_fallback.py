"""Readers of a workdir (``vmd_jax.load``, ``vmd-jax evaluate``) past a corrupt
newest checkpoint: they use the newest intact step, warn once per bad step, and
change nothing in the workdir (README "What survives what")."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import vmd_jax
from vmd_jax.trainer import build, checkpoint, evaluate, train
from vmd_jax.trainer import state as state_lib
from test_train import REPO, tiny_config

STEPS = 15  # checkpoints 5, 10, 15


def _config():
  c = tiny_config("md4", steps=STEPS)
  c.train.checkpoint_every = 5
  c.train.keep_checkpoints = 3
  c.eval.settings = "random:1"
  return c


def _state_target(c):
  data = build.build_dataset(c)
  model = build.build_model(c, data.vocab_size, data.seq_len)
  return state_lib.init_state(model, state_lib.make_optimizer(c.train), jax.random.key(1),
                              np.zeros((1, data.seq_len), np.int32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(workdir, {step: its whole saved state}) of a run with checkpoints 5, 10, 15."""
  workdir = tmp_path_factory.mktemp("trained") / "run"
  with pytest.MonkeyPatch.context() as m:  # evaluation is tested below, on its own
    m.setattr(evaluate, "evaluate_run", lambda *args, **kwargs: {})
    train.train_and_evaluate(_config(), str(workdir))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  states = {s: ckpt.restore(_state_target(_config()), s) for s in (5, 10, 15)}
  ckpt.close()
  return workdir, states


def corrupt_copy(trained, destination):
  """A copy of the run whose steps 20 (saved here, NaN in one EMA leaf), 15
  (every data file truncated to 0 bytes) and 10 (manifest deleted) are bad; 5 is intact.
  Also an in-progress save of step 25 (orbax's temporary directory) that a
  training run holding the workdir might be writing."""
  workdir, states = trained
  shutil.copytree(workdir, destination)
  ckpts = destination / "checkpoints"
  state = states[15]
  leaves, treedef = jax.tree.flatten(state.ema_params)
  leaves[0] = np.asarray(leaves[0]).copy()
  leaves[0].flat[0] = np.nan
  ckpt = checkpoint.Checkpointer(ckpts, keep=10)
  ckpt.save(20, state.replace(ema_params=jax.tree.unflatten(treedef, leaves)), force=True)
  ckpt.close()
  for data_file in (ckpts / "15" / "default" / "ocdbt.process_0" / "d").iterdir():
    with open(data_file, "r+b") as f:  # to 0: which half holds ema_params varies by run
      f.truncate(0)
  (ckpts / "10" / "default" / "manifest.ocdbt").unlink()
  in_progress = ckpts / "25.orbax-checkpoint-tmp-1700000000000000"
  in_progress.mkdir()
  (in_progress / "being_written").write_text("a training run's save")
  return destination


def snapshot(directory):
  """{relative path: (size, mtime, sha1)} of every file and folder below ``directory``."""
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      st = os.stat(path)
      digest = None
      if name in files:
        with open(path, "rb") as f:
          digest = hashlib.sha1(f.read()).hexdigest()
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns, digest)
  return out


def assert_tree_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_load_skips_bad_steps_with_a_warning_each_and_touches_nothing(trained, tmp_path,
                                                                     caplog):
  workdir = corrupt_copy(trained, tmp_path / "run")
  before = snapshot(workdir)
  _, params, _ = vmd_jax.load(str(workdir))
  assert_tree_equal(params, trained[1][5].ema_params)  # step 5, restored directly
  ckpts = workdir / "checkpoints"
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == "WARNING" and "vmd_jax" in r.pathname]
  assert len(warnings) == 3, warnings
  assert warnings[0] == (f"ema_params of checkpoint step 20 in {ckpts} holds non-finite values: "
                         "skipped, left in place; trying the step before it")
  for step, line in zip((15, 10), warnings[1:]):
    assert line.startswith(f"ema_params of checkpoint step {step} in {ckpts} could not be "
                           "restored (") and "\n" not in line, line
    assert line.endswith("): skipped, left in place; trying the step before it"), line
  assert snapshot(workdir) == before  # nothing moved, removed or written
  assert not (workdir / "checkpoints_corrupt").exists()


@pytest.mark.parametrize("step,message", [
    (20, "ema_params of checkpoint step 20 in {ckpts} holds non-finite values"),
    (15, "ema_params of checkpoint step 15 in {ckpts} could not be restored ("),
    (7, "no checkpoint step 7 in {ckpts} (steps there: [5, 10, 15, 20])"),
])
def test_an_explicit_bad_step_fails_in_one_line_without_falling_back(trained, tmp_path, step,
                                                                     message):
  workdir = corrupt_copy(trained, tmp_path / "run")
  with pytest.raises(checkpoint.CheckpointError) as e:
    vmd_jax.load(str(workdir), step=step)
  text = str(e.value)
  assert text.startswith(message.format(ckpts=workdir / "checkpoints")) and "\n" not in text, text
  _, params, _ = vmd_jax.load(str(workdir), step=5)
  assert_tree_equal(params, trained[1][5].ema_params)


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "vmd_jax", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_evaluate_uses_the_newest_intact_step_and_touches_no_checkpoint(trained, tmp_path):
  """``vmd-jax evaluate`` on the corrupt copy: exit 0, one warning line per bad
  step, and eval_latest.json's bound equals the bound of step 5's EMA parameters
  and names step 5."""
  workdir = corrupt_copy(trained, tmp_path / "run")
  before = snapshot(workdir / "checkpoints")
  out = run_cli("evaluate", f"--workdir={workdir}")
  assert out.returncode == 0, out.stderr[-3000:]
  warned = [l for l in out.stderr.splitlines() if "skipped, left in place" in l]
  assert [f"checkpoint step {s} in" in l for s, l in zip((20, 15, 10), warned)] == [True] * 3
  assert len(warned) == 3, out.stderr[-3000:]
  assert snapshot(workdir / "checkpoints") == before
  assert not (workdir / "checkpoints_corrupt").exists()

  c = _config()
  data = build.build_dataset(c)
  model = build.build_model(c, data.vocab_size, data.seq_len)
  expected = evaluate.evaluate_run(c, model, data, trained[1][5].ema_params, str(tmp_path))
  got = json.loads((workdir / "eval_latest.json").read_text())  # not the training's eval.json
  assert got["step"] == 5  # the step evaluated, not the newest one on disk
  np.testing.assert_allclose(got["nelbo"]["nelbo_nats_per_token"],
                             expected["nelbo"]["nelbo_nats_per_token"], rtol=1e-6)
  assert not np.array_equal(jax.tree.leaves(trained[1][5].ema_params)[0],
                            jax.tree.leaves(trained[1][15].ema_params)[0])  # steps differ


def test_evaluate_without_an_intact_step_is_one_line_and_exit_2(trained, tmp_path):
  workdir = corrupt_copy(trained, tmp_path / "run")
  shutil.rmtree(workdir / "checkpoints" / "5" / "default")
  before = snapshot(workdir)
  out = run_cli("evaluate", f"--workdir={workdir}")
  assert out.returncode == 2, out.stderr[-3000:]
  line = (f"vmd-jax evaluate: error: no intact checkpoint in {workdir}/checkpoints: steps 20, "
          "15, 10, 5 are unreadable or not finite\n")
  assert out.stderr.count("vmd-jax evaluate:") == 1 and line in out.stderr, out.stderr[-3000:]
  # No traceback at all: tensorstore's "Event loop is closed" reports from its threads
  # (finishing reads of the truncated step after orbax closed its event loop; most
  # runs print several) are dropped by the CLI.
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, \
      out.stderr[-3000:]
  assert snapshot(workdir) == before


def test_load_in_a_script_prints_one_warning_per_bad_step_and_no_traceback(trained, tmp_path):
  """``vmd_jax.load`` outside the CLI, step 15 also with an empty manifest.ocdbt:
  the reports of reads orbax gave up on ("Event loop is closed", dozens of
  tracebacks) are dropped as the CLI drops them, and each warning names the file
  and the reason, not pybind11's ``<bound method ...>``."""
  workdir = corrupt_copy(trained, tmp_path / "run")
  (workdir / "checkpoints" / "15" / "default" / "manifest.ocdbt").write_bytes(b"")
  code = f"import gc, vmd_jax; vmd_jax.load({str(workdir)!r}); gc.collect(); print('loaded')"
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "loaded", out.stderr[-3000:]
  assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, \
      out.stderr[-3000:]
  warned = [l for l in out.stderr.splitlines() if "skipped, left in place" in l]
  assert len(warned) == 3 and not any("bound method" in l for l in warned), warned
