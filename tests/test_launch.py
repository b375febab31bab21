"""launch/tpu_pod.sh and launch/slurm.sbatch: valid bash, their environment documented in
the README, and the commands they issue (gcloud and srun replaced by recorders)."""

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = [REPO / "launch" / "tpu_pod.sh", REPO / "launch" / "slurm.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_valid_bash_and_environment_documented(script):
  out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
  assert out.returncode == 0, out.stderr
  text, doc = script.read_text(), (REPO / "docs" / "launch.md").read_text()
  variables = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)[:}]", text)) - {"SLURM_SUBMIT_DIR"}
  assert variables  # the script reads its settings from the environment
  missing = sorted(v for v in variables if v not in doc)
  assert not missing, f"{script.name} reads {missing}, which docs/launch.md does not mention"
  assert f"launch/{script.name}" in doc
  assert f"launch/{script.name}" in (REPO / "README.md").read_text()


def recorder(bin_dir: Path, name: str, fail_on: str = ""):
  """An executable ``name`` that appends its arguments to ``name``.log (and exits 1 when
  its arguments contain ``fail_on``)."""
  path = bin_dir / name
  check = f'[[ " $* " == *" {fail_on} "* ]] && exit 1\n' if fail_on else ""
  path.write_text(f'#!/usr/bin/env bash\necho "$@" >> "{bin_dir}/{name}.log"\n{check}exit 0\n')
  path.chmod(path.stat().st_mode | stat.S_IEXEC)
  return bin_dir / f"{name}.log"


def test_tpu_pod_creates_copies_sets_up_and_runs_on_every_worker(tmp_path):
  log = recorder(tmp_path, "gcloud", fail_on="describe")  # no TPU VM yet
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", PROJECT="p", ZONE="z",
             TPU_NAME="pod", ACCELERATOR="v4-16", RUNTIME="rt", BUCKET="gs://b", RUN="r1")
  out = subprocess.run(["bash", "launch/tpu_pod.sh", "--config.train.num_steps=5"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  calls = log.read_text().splitlines()
  assert [c.split()[3] for c in calls] == ["describe", "create", "scp", "ssh", "ssh"]
  assert all("--zone=z --project=p" in c for c in calls)
  assert "--accelerator-type=v4-16 --version=rt" in calls[1]
  assert "--worker=all" in calls[2] and "launch/setup.sh" in calls[3] and "jax[tpu]" in calls[3]
  run = calls[4]
  assert "--worker=all" in run and "--distributed" in run
  assert "--workdir=gs://b/runs/r1" in run
  assert "--config.data.text8.data_dir=gs://b/tensorflow_datasets" in run
  assert run.index("--config=text8_md4") < run.index("--config.train.num_steps=5")


def test_slurm_runs_one_srun_with_distributed(tmp_path):
  log = recorder(tmp_path, "srun")
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}", SLURM_SUBMIT_DIR=str(REPO),
             WORKDIR="/shared/run", DATA_DIR="gs://b/tfds")
  out = subprocess.run(["bash", "launch/slurm.sbatch", "--config.train.num_steps=5"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  (call,) = log.read_text().splitlines()
  assert call.startswith("--kill-on-bad-exit=1 .venv/bin/python -m vmd_jax.main --distributed")
  for arg in ("--config=text8_md4", "--workdir=/shared/run",
              "--config.data.text8.data_dir=gs://b/tfds", "--config.model.dtype=bfloat16",
              "--config.model.attention=cudnn"):
    assert arg in call.split()
  assert call.split()[-1] == "--config.train.num_steps=5"
  # Without WORKDIR it stops at once, naming it.
  env.pop("WORKDIR")
  out = subprocess.run(["bash", "launch/slurm.sbatch"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=60)
  assert out.returncode != 0 and "WORKDIR" in out.stderr
