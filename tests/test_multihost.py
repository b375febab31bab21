"""Two processes on localhost (jax.distributed, CPU, gloo), 2 devices each, sharing a
workdir and a data dir: both exit 0 and train the parameters one process trains."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vmd_jax.trainer import build, checkpoint, config as config_lib, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_PATH = pathlib.Path(REPO)
TEXT = os.path.join(REPO, "tests", "data", "text8", "sqlite3_h_comments.txt")

TINY = {"model.width": 16, "model.depth": 1, "model.num_heads": 2, "model.dropout": 0.0,
        "train.batch_size": 8, "train.num_steps": 6, "train.warmup_steps": 2,
        "train.log_every": 3, "train.checkpoint_every": 100, "eval.settings": "random:1"}
CASES = {
    "synthetic": ("synthetic_md4", {"data.synthetic.table": "two_token_uniform",
                                    "data.num_eval": 64, "eval.batch_size": 16,
                                    "eval.num_samples": 32}),
    "text8": ("text8_md4", {"data.text8.source": "local", "data.text8.path": TEXT,
                            "data.seq_len": 32, "eval.batch_size": 64}),
}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start_processes(args, logs_dir, num=2, entry=("-m", "vmd_jax.main"), env=None,
                    tag="process"):
  """Starts ``python ENTRY --distributed ARGS`` as ``num`` processes of one job;
  returns (processes, log paths ``logs_dir/TAG_i.log``)."""
  port = free_port()
  procs, logs = [], []
  for i in range(num):
    env_i = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                 JAX_NUM_PROCESSES=str(num), JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu",
                 XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2",
                 **(env or {}))
    logs.append(logs_dir / f"{tag}_{i}.log")
    with open(logs[-1], "w") as log:
      procs.append(subprocess.Popen([sys.executable, *entry, "--distributed", *args], cwd=REPO,
                                    env=env_i, stdout=log, stderr=subprocess.STDOUT))
  return procs, logs


def wait_processes(procs, logs, timeout=480, expected=(0,)):
  """(exit codes, logs) once every process ended. Every process is killed if any
  is still running at ``timeout`` or when one ends with a code not in ``expected``."""
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and any(p.poll() is None for p in procs):
      if any(p.poll() not in (None, *expected) for p in procs):
        break  # one failed: do not wait for the other's timeouts
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return [p.returncode for p in procs], [log.read_text() for log in logs]


def run_processes(args, logs_dir, num=2, timeout=480):
  """Runs ``python -m vmd_jax.main --distributed ARGS`` as ``num`` processes;
  returns (exit codes, logs). Every process is killed if any is still running at
  ``timeout`` or when one fails."""
  return wait_processes(*start_processes(args, logs_dir, num), timeout=timeout)


def config_of(name, overrides):
  c = config_lib.load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
  c.update_from_flattened_dict(overrides)
  return c


def saved(workdir, config, field):
  data = build.build_dataset(config)
  model = build.build_model(config, data.vocab_size, data.seq_len)
  abstract = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, data.seq_len), np.int32))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  try:
    return ckpt.restore_subtree(field, abstract)
  finally:
    ckpt.close()


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_what_one_process_trains(tmp_path, case):
  name, overrides = CASES[case]
  overrides = {**TINY, **overrides, "data.text8.data_dir": str(tmp_path / "tfds")}
  workdir = tmp_path / "two"
  args = [f"--config={name}", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()
      if not (case == "synthetic" and k == "data.text8.data_dir")]
  codes, logs = run_processes(args, tmp_path)
  assert codes == [0, 0], "\n\n".join(log[-4000:] for log in logs)
  assert "2 processes, 4 devices" in logs[0]
  if case == "text8":  # process 0 alone prepared the shared data dir
    assert "Downloading and preparing" in logs[0]
    assert "Downloading and preparing" not in logs[1]
  assert (workdir / "eval.json").exists() and (workdir / "checkpoints" / "6").is_dir()

  config = config_of(name, overrides)
  train.train_and_evaluate(config, str(tmp_path / "one"))  # this process: 1 device
  for field in ("params", "ema_params"):
    two, one = saved(workdir, config, field), saved(tmp_path / "one", config, field)
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  # training moved the parameters away from their EMA: the comparison above is not vacuous
  assert not np.allclose(jax.tree.leaves(saved(workdir, config, "params"))[0],
                         jax.tree.leaves(saved(workdir, config, "ema_params"))[0])


def test_distributed_arguments_from_the_environment():
  from vmd_jax.trainer import cli
  assert cli.distributed_args({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}) == {
      "num_processes": 2, "process_id": 1}
  assert cli.distributed_args({"JAX_NUM_PROCESSES": ""}) == {}  # left to cluster detection
  with pytest.raises(cli.InputError, match="JAX_PROCESS_ID='one' is not a non-negative"):
    cli.distributed_args({"JAX_PROCESS_ID": "one"})


def test_run_and_data_paths_go_through_epath():
  """gs:// survives every path helper, and no module of the trainer or the data layer
  reads or writes files through os.path, open(), shutil or pathlib (which cannot
  reach a bucket); the local-path tests exercise the same epath code."""
  import re
  from vmd_jax.data import paths, text8_builder
  assert os.fspath(paths.as_path("gs://bucket/runs/a")) == "gs://bucket/runs/a"
  assert text8_builder.local_text_config("gs://bucket/book.txt").text_path == \
      "gs://bucket/book.txt"
  allowed = {"paths.py": {"os.path.abspath", "os.path.expanduser"},
             # flock needs a local file descriptor; gs:// workdirs take the heartbeat path
             "lock.py": {"open("},
             # the free space a disk-full message names, on a local disk only (gs://: unknown)
             "checkpoint.py": {"shutil.disk_usage"},
             # config files and packaged configs are local Python files
             "cli.py": {"os.path.isfile", "os.path.basename", "os.path.join", "os.path.dirname",
                        "os.path.abspath", "os.path.exists", "os.path.isdir", "os.listdir"},
             "config.py": {"os.path.splitext", "os.path.basename", "os.path.exists",
                           "os.path.join", "os.path.dirname"}}
  for folder in ("trainer", "data"):
    for path in sorted((REPO_PATH / "vmd_jax" / folder).glob("*.py")):
      used = set(re.findall(r"\b(os\.path\.\w+|os\.listdir|os\.walk|os\.makedirs|shutil\.\w+|"
                            r"pathlib|(?<![.\w])open\()", path.read_text()))
      extra = used - allowed.get(path.name, set())
      assert not extra, f"{path.name} uses {sorted(extra)}"


def _wait_for_log(text, log, procs, timeout=300):
  deadline = time.time() + timeout
  while text not in log.read_text():
    assert all(p.poll() is None for p in procs), f"ended before {text!r}:\n{log.read_text()[-3000:]}"
    assert time.time() < deadline, f"no {text!r} in {timeout} s:\n{log.read_text()[-3000:]}"
    time.sleep(0.1)


def test_two_processes_refuse_a_second_job_stop_together_and_fall_back_together(tmp_path):
  """A 2-process job (``tests/multihost_worker.py``) held at step 6: a second
  2-process job on its workdir is refused at once (exit 1). SIGTERM to both
  processes: both save one step N, the same (orbax's ``reached_preemption``),
  and exit 143. With N then corrupt, a rerun's two processes both move N aside
  with a warning, resume from the step before it and end (exit 0) with equal,
  finite parameters. The runs share a compilation cache (same config)."""
  workdir, gate = tmp_path / "run", tmp_path / "go"
  overrides = {**TINY, **CASES["synthetic"][1], "train.num_steps": 20,
               "train.checkpoint_every": 3, "train.keep_checkpoints": 3, "train.log_every": 1}
  args = ["--config=synthetic_md4", f"--workdir={workdir}"] + [
      f"--config.{k}={v}" for k, v in overrides.items()]
  cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  job = lambda tag, **env: start_processes(args, tmp_path, entry=("tests/multihost_worker.py",),
                                           env={**cache, **env}, tag=tag)
  first, first_logs = job("first", GATE=f"6:{gate}")
  try:
    _wait_for_log("step 6/20", first_logs[0], first)
    codes, logs = wait_processes(*job("second"), timeout=240, expected=(1,))
    assert codes == [1, 1], "\n\n".join(log[-3000:] for log in logs)
    assert f"error: {workdir} is in use by pid {first[0].pid} on host " in logs[0], logs[0][-3000:]
    assert f"error: {workdir} is held by another run (see process 0)" in logs[1], logs[1][-3000:]
    assert not any("Training md4" in log for log in logs)

    for p in first:
      p.send_signal(signal.SIGTERM)
    gate.touch()
    codes, logs = wait_processes(first, first_logs, timeout=240, expected=(143,))
  finally:
    for p in first:
      if p.poll() is None:
        p.kill()
  assert codes == [143, 143], "\n\n".join(log[-3000:] for log in logs)
  stops = [log.strip().splitlines()[-1] for log in logs]
  n = int(stops[0].split("after step ")[1].split()[0])
  for line in stops:
    assert line.endswith(f"stopped by SIGTERM after step {n} of 20; saved {workdir}/"
                         f"checkpoints/{n}; run the same command again to resume"), stops
  listed = list((workdir / "checkpoints").iterdir())
  steps = sorted(int(d.name) for d in listed if d.name.isdigit())
  assert 6 <= n < 20 and steps[-1] == n and not [d for d in listed if "tmp" in d.name], listed
  intact = steps[-2]

  data_files = list((workdir / "checkpoints" / str(n)).glob("default/ocdbt.process_*/d/*"))
  assert data_files
  for f in data_files:
    with open(f, "r+b") as fh:
      fh.truncate(0)
  codes, logs = wait_processes(*job("rerun"), timeout=300)
  assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)
  for log in logs:
    assert (f"Checkpoint step {n} in {workdir}/checkpoints could not be restored" in log and
            f"moved to {workdir}/checkpoints_corrupt/{n}; trying the step before it" in log and
            f"Resuming from step {intact} " in log), log[-3000:]
  assert (workdir / "checkpoints_corrupt" / str(n) / "default").is_dir()
  assert (workdir / "checkpoints" / "20").is_dir()
  with np.load(workdir / "local_ema_0.npz") as a, np.load(workdir / "local_ema_1.npz") as b:
    assert a.files == b.files and a.files
    for k in a.files:
      assert np.all(np.isfinite(a[k])), k
      np.testing.assert_array_equal(a[k], b[k])
