"""What a long run survives: SIGKILL at any moment, SIGTERM, divergence, a second
run on its workdir, a corrupt newest checkpoint (README "What survives what").

Runs are real processes, forked from a server that imported JAX once, sharing a
compilation cache, so a kill is a real SIGKILL and a restart costs no import.
Every run trains the same tiny model for STEPS steps; the uninterrupted one is
the reference the others must match bit for bit. Evaluation is skipped in these
runs (test_train.py covers it): the faults are all in training.
"""

import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax.trainer import checkpoint, guard, lock
from test_train import REPO, final_params, tiny_config

STEPS = 24


def run_training(workdir, log, cache_dir, train_overrides, evaluate_run=None):
  """One training run in this (fresh) process, as ``vmd-jax train`` would run it:
  output to ``log``, a fault's one line last, its exit code. ``evaluate_run``
  replaces the final evaluation (default: none)."""
  out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  os.dup2(out, 1)
  os.dup2(out, 2)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  from absl import logging
  from vmd_jax.trainer import cli, evaluate, train
  logging.set_verbosity(logging.INFO)
  evaluate.evaluate_run = evaluate_run or (lambda *args, **kwargs: {})
  c = tiny_config("md4", steps=STEPS)
  c.train.update(train_overrides)
  code = 0
  try:
    train.train_and_evaluate(c, workdir)
  except Exception as e:  # what the command line does with it
    code = cli._run_ended(e)
    if code is None:
      raise
    print(f"vmd-jax train: {e}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def hold_lock(workdir):
  """Holds ``workdir``'s lock until killed."""
  with lock.WorkdirLock(workdir):
    open(os.path.join(workdir, "held"), "w").close()
    time.sleep(600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """start(workdir, **train_overrides) -> a started training process."""
  ctx = multiprocessing.get_context("forkserver")
  ctx.set_forkserver_preload(["vmd_jax.trainer.train", "vmd_jax.trainer.cli", "test_faults",
                              "clu.metric_writers"])  # TensorFlow: 7 s a run
  cache = str(tmp_path_factory.mktemp("jax_cache"))

  def start(workdir, **overrides):
    os.makedirs(workdir, exist_ok=True)
    p = ctx.Process(target=run_training,
                    args=(str(workdir), str(workdir) + ".log", cache, overrides))
    p.start()
    return p

  start.ctx, start.cache = ctx, cache
  return start


def finish(p, timeout=600):
  p.join(timeout)
  assert p.exitcode is not None, "run did not end"
  return p.exitcode


def log_of(workdir):
  path = str(workdir) + ".log"
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return f.read()


@pytest.fixture(scope="module")
def straight(runs, tmp_path_factory):
  """The uninterrupted run: checkpoints 8, 16, 24."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  assert finish(runs(workdir, checkpoint_every=8, keep_checkpoints=3)) == 0, log_of(workdir)
  return workdir


def assert_same_final_state(workdir, reference):
  a, b = final_params(reference), final_params(workdir)
  assert int(a.step) == int(b.step) == STEPS
  chex.assert_trees_all_equal(a, b)  # structure too: a missing leaf fails


def final_params_of(workdir, step):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    return ckpt.restore(_fresh_state(), step)
  finally:
    ckpt.close()


def steps_in(workdir):
  d = os.path.join(workdir, "checkpoints")
  names = os.listdir(d) if os.path.isdir(d) else []
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


def wait_for(condition, p, timeout=300):
  end = time.time() + timeout
  while not condition():
    assert p.is_alive(), "the run ended before it could be interrupted"
    assert time.time() < end, "timed out"
    time.sleep(0.005)


def test_sigkill_at_random_moments_resumes_bit_identical(runs, straight, tmp_path):
  """Five SIGKILLs (three while orbax writes a step; the killed runs save every
  step), then a run to the end: the final state equals the uninterrupted run's,
  and no temporary directory is left."""
  workdir = tmp_path / "run"
  rng = random.Random(0)
  during_write, progress = 0, []
  for i in range(5):
    before = (steps_in(workdir)[0] or [0])[-1]
    p = runs(workdir, checkpoint_every=1)
    if i % 2 == 0:  # the moment a step directory is being written
      wait_for(lambda: steps_in(workdir)[1] and (steps_in(workdir)[0] or [0])[-1] > before, p)
    else:  # a random moment after a step
      wait_for(lambda: (steps_in(workdir)[0] or [0])[-1] > before, p)
      time.sleep(rng.uniform(0.0, 0.2))
    p.kill()
    assert finish(p) == -signal.SIGKILL
    during_write += bool(steps_in(workdir)[1])
    progress.append((steps_in(workdir)[0] or [0])[-1])
  assert during_write >= 3 and progress == sorted(progress) and progress[-1] < STEPS, (
      during_write, progress)
  p = runs(workdir, checkpoint_every=8)
  assert finish(p) == 0, log_of(workdir)[-3000:]
  assert f"Resuming from step {progress[-1]}" in log_of(workdir)
  assert not steps_in(workdir)[1]
  assert_same_final_state(workdir, straight)


def test_sigterm_saves_the_current_step_and_resumes_from_it(runs, straight, tmp_path):
  workdir = tmp_path / "run"
  # no checkpoint but the one SIGTERM asks for; a log line every step to act at step 2
  p = runs(workdir, checkpoint_every=1000, log_every=1)
  wait_for(lambda: f"step 2/{STEPS}" in log_of(workdir), p)
  p.terminate()
  assert finish(p) == 128 + signal.SIGTERM
  saved, tmp = steps_in(workdir)
  assert len(saved) == 1 and 2 <= saved[0] < STEPS and not tmp
  last = log_of(workdir).strip().splitlines()[-1]
  assert last == (f"vmd-jax train: stopped by SIGTERM after step {saved[0]} of {STEPS}; "
                  f"saved {workdir}/checkpoints/{saved[0]}; run the same command again to "
                  "resume"), last
  assert finish(runs(workdir, checkpoint_every=1000)) == 0
  assert f"Resuming from step {saved[0]}" in log_of(workdir)
  assert_same_final_state(workdir, straight)


def test_divergence_stops_at_the_first_non_finite_step_saving_nothing_after(runs, tmp_path):
  """lr = 1e6 diverges; the run ends with exit 1 and one line naming the step
  and the last good checkpoint; every checkpoint left is finite and the last one
  is the step just before (checkpoints every step), so the run stopped at once."""
  workdir = tmp_path / "run"
  assert finish(runs(workdir, lr=1e6, checkpoint_every=1)) == 1
  last = log_of(workdir).strip().splitlines()[-1]
  saved, _ = steps_in(workdir)
  bad = saved[-1] + 1
  assert last.startswith(f"vmd-jax train: training diverged at step {bad} (loss = nan") or \
      last.startswith(f"vmd-jax train: training diverged at step {bad} (loss = inf"), last
  assert f"last good checkpoint: {workdir}/checkpoints/{saved[-1]} " in last
  target = _fresh_state()
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  for step in saved:
    assert checkpoint.all_finite(ckpt.restore(target, step)), step
  ckpt.close()


def _fresh_state():
  from vmd_jax.trainer import build, state as state_lib
  c = tiny_config("md4")
  data = build.build_dataset(c)
  model = build.build_model(c, data.vocab_size, data.seq_len)
  return state_lib.init_state(model, state_lib.make_optimizer(c.train), jax.random.key(0),
                              np.zeros((1, 2), np.int32))


def test_guard_keeps_the_last_good_state_once_a_step_is_not_finite():
  """A toy step x -> x + g with the loss g: the state stops at the last finite
  step and stays there (the flag is sticky), whatever follows."""
  def step(state, g):
    return state + g, {"loss": g, "grad_norm": jnp.abs(g)}

  guarded = jax.jit(guard.guard_step(step))
  state, ok = jnp.float32(0.0), jnp.bool_(True)
  seen = []
  for g in [1.0, 2.0, np.nan, 4.0, np.inf, 8.0]:
    state, metrics, ok = guarded(state, jnp.float32(g), ok)
    seen.append((float(state), bool(ok)))
  assert seen == [(1.0, True), (3.0, True), (3.0, False), (3.0, False), (3.0, False),
                  (3.0, False)]
  assert "step 3 (loss = nan, grad_norm = nan)" in guard.diverged_message(
      3, {"loss": np.nan, "grad_norm": np.nan}, "w/checkpoints/2")


def test_held_workdir_is_refused_at_once_and_a_dead_holder_is_taken_over(runs, tmp_path,
                                                                          caplog):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = runs.ctx.Process(target=hold_lock, args=(str(workdir),))
  holder.start()
  wait_for(lambda: (workdir / "held").exists(), holder)
  t0 = time.time()
  out = subprocess.run([sys.executable, "-m", "vmd_jax", "train", "--config=synthetic_md4",
                        f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  seconds = time.time() - t0
  last = out.stderr.strip().splitlines()[-1]
  assert out.returncode == 1 and last.startswith(
      f"vmd-jax train: error: {workdir} is in use by pid {holder.pid} on host "
      f"{socket.gethostname()} (since "), out.stderr[-2000:]
  assert sorted(os.listdir(workdir)) == [".lock", "held"]  # nothing written
  print(f"refused in {seconds:.1f} s, imports included")

  holder.kill()
  holder.join()
  with lock.WorkdirLock(workdir):
    assert f"Took over the lock of pid {holder.pid} on host {socket.gethostname()}" in \
        caplog.text
  assert (workdir / ".lock").read_text() == ""


def test_lock_without_flock_uses_a_holder_file_with_a_heartbeat(tmp_path, monkeypatch,
                                                                caplog):
  def no_flock(fd, operation):
    raise OSError(lock.errno.ENOLCK, "No locks available")
  monkeypatch.setattr(lock.fcntl, "flock", no_flock)
  path = tmp_path / ".lock"
  with lock.WorkdirLock(tmp_path):
    with pytest.raises(lock.WorkdirLocked, match=rf"in use by pid {os.getpid()} on host "):
      lock.WorkdirLock(tmp_path).__enter__()
  assert not path.exists()

  dead = subprocess.Popen(["true"])
  dead.wait()
  now = time.time()
  for holder, taken in [({"pid": dead.pid, "host": socket.gethostname()}, True),
                        ({"pid": 1, "host": "elsewhere"}, False),
                        ({"pid": 1, "host": "elsewhere", "heartbeat": now - 3600}, True)]:
    holder.setdefault("heartbeat", now)
    holder["started"] = now
    lock.io.write_json(path, holder)
    if taken:
      with lock.WorkdirLock(tmp_path):
        assert f"Took over the lock of pid {holder['pid']}" in caplog.text
    else:
      with pytest.raises(lock.WorkdirLocked, match=r"in use by pid 1 on host elsewhere"):
        lock.WorkdirLock(tmp_path).__enter__()


def test_corrupt_newest_checkpoints_are_moved_aside_and_the_intact_one_resumed(
    runs, straight, tmp_path):
  """Step 24 truncated, step 16 missing a file: both moved to checkpoints_corrupt/
  with a warning each, the run resumes from 8 and ends where the reference does."""
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  ocdbt = "default/ocdbt.process_0"
  data = workdir / "checkpoints" / "24" / ocdbt / "d"
  largest = max(data.iterdir(), key=lambda f: f.stat().st_size)
  size = largest.stat().st_size
  with open(largest, "r+b") as f:
    f.truncate(size // 2)
  (workdir / "checkpoints" / "16" / "default" / "manifest.ocdbt").unlink()
  files = {s: sorted(str(f.relative_to(workdir / "checkpoints" / s))
                     for f in (workdir / "checkpoints" / s).rglob("*")) for s in ("16", "24")}

  assert finish(runs(workdir, checkpoint_every=8, keep_checkpoints=3)) == 0
  log = log_of(workdir)
  for s in ("24", "16"):
    assert (f"Checkpoint step {s} in {workdir}/checkpoints could not be restored" in log), log
    moved = workdir / "checkpoints_corrupt" / s
    assert f"moved to {moved}" in log
    assert sorted(str(f.relative_to(moved)) for f in moved.rglob("*")) == files[s]
  assert (moved.parent / "24" / ocdbt / "d" / largest.name).stat().st_size == size // 2
  assert "Resuming from step 8" in log
  assert steps_in(workdir)[0] == [8, 16, 24]
  assert_same_final_state(workdir, straight)


def _flip_until_silent(step_dir, target):
  """Flips 64 bytes (XOR 0xFF) inside a data file of ``step_dir``, trying places
  until orbax alone reads the step back without an error but with other EMA
  values (a disk that lied: zstd's raw blocks and OCDBT check nothing of the data)."""
  def ema():  # orbax alone, no checksums; a fresh reader (a failed read breaks its loop)
    manager = checkpoint.Checkpointer(step_dir.parent, read_only=True)._manager
    try:
      return jax.tree.leaves(manager.restore(int(step_dir.name), args=checkpoint.ocp.args.
                                             StandardRestore(checkpoint.abstract_like(target))
                                             ).ema_params)
    finally:
      manager.close()
  intact = ema()
  for path in sorted((step_dir / "default" / "ocdbt.process_0" / "d").iterdir(),
                     key=lambda f: -f.stat().st_size):
    blob = path.read_bytes()
    for offset in range(len(blob) // 3, len(blob) - 64, len(blob) // 12):
      flipped = blob[:offset] + bytes(b ^ 0xFF for b in blob[offset:offset + 64]) + \
          blob[offset + 64:]
      path.write_bytes(flipped)
      try:
        if any(np.any(a != b) for a, b in zip(ema(), intact)):
          return
      except Exception:  # pylint: disable=broad-except  # orbax noticed: try another place
        pass
      path.write_bytes(blob)
  raise AssertionError("no 64-byte flip changed the EMA parameters silently")


def test_silently_corrupt_newest_checkpoint_is_caught_by_its_checksums(runs, straight,
                                                                      tmp_path, caplog):
  """64 bytes flipped inside a data file of step 24, read back by orbax without a
  word: ``vmd_jax.load`` skips the step, naming the checksums, and uses 16; a
  training run moves it aside and resumes from 16, ending where the reference does."""
  import vmd_jax
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  _flip_until_silent(workdir / "checkpoints" / "24", _fresh_state())
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", read_only=True)
  with pytest.raises(checkpoint.CheckpointError, match="does not match the checksums"):
    ckpt.restore(_fresh_state(), 24)
  ckpt.close()

  _, params, _ = vmd_jax.load(workdir)
  assert (f"ema_params of checkpoint step 24 in {workdir}/checkpoints does not match the "
          "checksums written with it" in caplog.text), caplog.text
  chex.assert_trees_all_equal(params, final_params_of(straight, 16).ema_params)

  assert finish(runs(workdir, checkpoint_every=8, keep_checkpoints=3)) == 0
  log = log_of(workdir)
  assert (f"Checkpoint step 24 in {workdir}/checkpoints does not match the checksums "
          f"written with it" in log), log[-3000:]
  assert f"moved to {workdir}/checkpoints_corrupt/24" in log
  assert "Resuming from step 16" in log
  assert_same_final_state(workdir, straight)


def run_training_signalled(workdir, log, cache_dir, phase):
  """``run_training`` with a SIGTERM to itself while compiling the step
  (``phase = "setup"``) or in the final evaluation (``"evaluation"``)."""
  from vmd_jax.trainer import checkpoint, train
  signalled = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGTERM)
  if phase == "setup":
    compile_step = train.compile_step
    train.compile_step = lambda *args, **kwargs: (signalled(), compile_step(*args, **kwargs))[1]
  if phase == "resume":  # the signal lands inside orbax's restore
    restore = checkpoint.ocp.CheckpointManager.restore

    def signalled_restore(self, *args, **kwargs):
      signalled()
      time.sleep(0.1)  # Python runs the handler here, inside orbax's restore
      return restore(self, *args, **kwargs)
    checkpoint.ocp.CheckpointManager.restore = signalled_restore
  run_training(workdir, log, cache_dir, {"checkpoint_every": 1000},
               evaluate_run=signalled if phase == "evaluation" else None)


@pytest.mark.parametrize("phase", ["setup", "evaluation", "resume"])
def test_sigterm_outside_the_steps_stops_at_once_and_says_where(runs, tmp_path, phase):
  """SIGTERM while the step compiles, during the final evaluation, or while a
  checkpoint is read back: exit 143 with a last line saying where the run was;
  nothing is lost (set-up saved no step; the evaluation came after the last step
  was saved; the step being read is not taken for a corrupt one), and the same
  command resumes."""
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  if phase == "resume":
    assert finish(runs(workdir, checkpoint_every=8, num_steps=8)) == 0
  p = runs.ctx.Process(target=run_training_signalled,
                       args=(str(workdir), str(workdir) + ".log", runs.cache, phase))
  p.start()
  assert finish(p) == 128 + signal.SIGTERM, log_of(workdir)[-3000:]
  last = log_of(workdir).strip().splitlines()[-1]
  saved, tmp = steps_in(workdir)
  if phase == "resume":
    assert last == ("vmd-jax train: stopped by SIGTERM while setting up; run the same "
                    "command again to resume"), last
    assert saved == [8] and not tmp and not os.path.exists(f"{workdir}/checkpoints_corrupt")
  elif phase == "setup":
    assert last == (f"vmd-jax train: stopped by SIGTERM while setting up, before step 1 of "
                    f"{STEPS}; run the same command again to resume"), last
    assert saved == [] and not tmp
  else:
    assert last == (f"vmd-jax train: stopped by SIGTERM during the final evaluation, after "
                    f"step {STEPS} of {STEPS} (saved {workdir}/checkpoints/{STEPS}); run the "
                    "same command again to resume"), last
    assert saved == [STEPS] and not tmp
  assert finish(runs(workdir, checkpoint_every=1000)) == 0


SIGTERM_FORKS = r"""
import os, random, signal, sys, threading, time
from vmd_jax.trainer import cli, guard, lock, preemption, sweep, train  # noqa: F401 (once)

def setting_up():  # what a run's set-up looks like to the exit path
  threading.Thread(target=threading.Event().wait).start()  # a library thread that stays
  with preemption.StopOutsideSteps():
    time.sleep(random.uniform(0.0, 0.02))
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)

cli.COMMANDS["train"] = (cli.COMMANDS["train"][0], setting_up)
children = {}
for i in range(20):  # all at once, forked after one import
  pid = os.fork()
  if pid == 0:
    random.seed(i)
    cli.run(["vmd-jax", "train", "--config=synthetic_md4", "--workdir=" + sys.argv[1]])
    os._exit(0)
  children[pid] = i
codes, end = ["hung"] * 20, time.time() + 60
while children and time.time() < end:
  for pid, i in list(children.items()):
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == pid:
      codes[i] = os.waitstatus_to_exitcode(status)
      del children[pid]
  time.sleep(0.01)
for pid in children:
  os.kill(pid, signal.SIGKILL)
print(codes)
"""


def test_sigterm_while_setting_up_exits_143_every_time(tmp_path):
  """20 SIGTERMs at random moments of a set-up that has a library thread still
  running (as TensorFlow's and orbax's are): each process ends at once with the
  message and exit 143. (It used to leave through the interpreter's shutdown,
  which waits on such threads or crashes in them: exit 139 in 4 of 9 real runs.)"""
  out = subprocess.run([sys.executable, "-c", SIGTERM_FORKS, str(tmp_path / "run")],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  codes = out.stdout.strip().splitlines()[-1]
  assert codes == str([128 + signal.SIGTERM] * 20), (codes, out.stderr[-2000:])
  message = ("vmd-jax train: stopped by SIGTERM while setting up; run the same command again "
             "to resume\n")
  assert out.stderr.count(message) == 20, out.stderr[-2000:]


def run_training_disk_full(workdir, log, cache_dir):
  """``run_training`` whose disk fills up at the save of step 16 (orbax's save
  raising ENOSPC, as its writing threads do)."""
  import errno
  save = checkpoint.ocp.CheckpointManager.save

  def full(self, step, *args, **kwargs):
    if step >= 16:
      raise OSError(errno.ENOSPC, "No space left on device", f"{workdir}/checkpoints/16")
    return save(self, step, *args, **kwargs)
  checkpoint.ocp.CheckpointManager.save = full
  run_training(workdir, log, cache_dir, {"checkpoint_every": 8})


def test_a_full_disk_is_one_line_naming_the_space_left_and_the_intact_steps(runs, tmp_path):
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  p = runs.ctx.Process(target=run_training_disk_full,
                       args=(str(workdir), str(workdir) + ".log", runs.cache))
  p.start()
  assert finish(p) == 1, log_of(workdir)[-3000:]
  log = log_of(workdir)
  assert "Traceback" not in log, log[-3000:]
  last = log.strip().splitlines()[-1]
  free = shutil.disk_usage(workdir).free / 2**20
  assert re.fullmatch(
      rf"vmd-jax train: no space left on the device of {workdir}/checkpoints while saving "
      r"step 16 \((\d+) MiB free\); intact steps: 8; free some space and run the same "
      "command again to resume", last), last
  assert abs(int(re.search(r"\((\d+) MiB", last).group(1)) - free) < 1024
  assert steps_in(workdir)[0] == [8]


def test_two_sigints_20_ms_apart_save_the_step_or_say_plainly_they_did_not(runs, tmp_path):
  """Ctrl-C twice, 20 ms apart, mid-run: exit 130 without a traceback; either the
  second waited for the stop's checkpoint (the step is saved) or it stopped before
  that save began and says so. It used to interrupt orbax's save with a traceback,
  losing the step."""
  workdir = tmp_path / "run"
  p = runs(workdir, checkpoint_every=1000, log_every=1)
  wait_for(lambda: f"step 2/{STEPS}" in log_of(workdir), p)
  os.kill(p.pid, signal.SIGINT)
  time.sleep(0.02)
  os.kill(p.pid, signal.SIGINT)
  assert finish(p) == 128 + signal.SIGINT, log_of(workdir)[-3000:]
  log = log_of(workdir)
  assert "Traceback" not in log, log[-3000:]
  last = log.strip().splitlines()[-1]
  saved, tmp = steps_in(workdir)
  if "without saving" in last:
    assert last == ("vmd-jax train: stopped at once by a second SIGINT, without saving the "
                    "current step; run the same command again to resume from the last "
                    "checkpoint"), last
  else:
    assert len(saved) == 1 and last == (
        f"vmd-jax train: stopped by SIGINT after step {saved[0]} of {STEPS}; saved "
        f"{workdir}/checkpoints/{saved[0]}; run the same command again to resume"), last
  assert not tmp
