"""The command line: one line and exit code 2 for every kind of bad input;
``vmd-jax sample`` / ``evaluate`` / ``vmd_jax.load`` on a trained run."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import vmd_jax
from vmd_jax.trainer import checkpoint, config as config_lib, train
from test_train import REPO, tiny_config


def run_cli(*args, timeout=120):
  return subprocess.run([sys.executable, "-m", "vmd_jax", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args,message", [
    (["--config.foo=1"], "unknown config key 'foo'; valid keys here: "),
    (["--config.train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'train.lr'"),
    (["--config.train.lr=abc"], "--config.train.lr=abc: could not convert string to float"),
    (["--config.train.lr=nan"], "config.train.lr = nan; must be a finite number"),
    (["--config.train.lr=inf"], "config.train.lr = inf; must be a finite number"),
    (["--config.seed=-1"], "config.seed = -1; must be an int in [0, 2^31)"),
    (["--config.diffusion.prime_digits=100"],
     "config.diffusion.prime_digits = 100; must be at most 30: 100 digits make at least "
     "2^100 codes"),
    (["--config=nowhere/missing.py"], "config file 'nowhere/missing.py' not found (packaged "
                                      "configs: sudoku_md4"),
    (["--config.model.attention=cudnn"], "config.model.attention = 'cudnn' needs "
                                         "config.model.dtype = 'bfloat16'"),
    (["--config.model.attention=cudnn", "--config.model.dtype=bfloat16"],
     "config.model.attention = 'cudnn' runs on NVIDIA GPUs only, and this run's devices "
     "are cpu"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  workdir = tmp_path / "run"
  out = run_cli("train", "--config=configs/synthetic_md4.py", f"--workdir={workdir}", *args)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and message in lines[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr and not workdir.exists()  # nothing written


def test_training_without_tensorboardx_is_one_line_and_exit_2(tmp_path):
  """The run's summaries need tensorboardX; an install without it is told what to add."""
  workdir = tmp_path / "run"
  code = ("import sys; sys.modules['tensorboardX'] = None; from vmd_jax.trainer import cli; "
          f"cli.run(['vmd-jax', 'train', '--config=synthetic_md4', '--workdir={workdir}'])")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].endswith(
      "which needs tensorboardX: pip install 'vmd_jax[train]'"), out.stderr[-2000:]
  assert not workdir.exists()


def test_workdir_that_is_a_file_is_refused(tmp_path):
  path = tmp_path / "file"
  path.write_text("keep me")
  out = run_cli("train", "--config=synthetic_md4", f"--workdir={path}")
  assert out.returncode == 2 and out.stderr.strip().endswith(f"--workdir={path} is a file, "
                                                             "not a directory")
  assert path.read_text() == "keep me"


def test_help_and_version_exit_0():
  """vmd-jax --help lists every command; COMMAND --help lists its own flags first
  (not absl's "Try --helpfull"); --version names the package's version."""
  out = run_cli("--help")
  assert out.returncode == 0 and out.stdout.startswith("usage: vmd-jax COMMAND"), out.stderr
  assert [l.split()[0] for l in out.stdout.splitlines() if l.startswith("  ")][:4] == [
      "train", "evaluate", "sample", "compile"]
  out = run_cli("train", "--help")
  assert out.returncode == 0, out.stderr[-2000:]
  flags_listed = [l.split(":")[0].strip() for l in out.stdout.splitlines()
                  if l.startswith("  --")]
  assert flags_listed == ["--config", "--workdir", "--[no]distributed"], out.stdout
  assert "text8_vmd" in out.stdout  # the packaged configs are named
  for command in ("evaluate", "sample", "compile"):
    out = run_cli(command, "-h")
    assert out.returncode == 0 and out.stdout.startswith(f"usage: vmd-jax {command} ")
  out = run_cli("--version")
  assert out.returncode == 0 and out.stdout.strip() == f"vmd-jax {vmd_jax.__version__}"


def test_train_without_config_names_the_packaged_configs(tmp_path):
  out = run_cli("train", f"--workdir={tmp_path / 'run'}")
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith("vmd-jax train: error: --config is required") and \
      "synthetic_table" in lines[0]
  assert not (tmp_path / "run").exists()


def test_core_only_install_is_told_what_to_add():
  """Without the trainer's packages (absl here) the console script prints one line
  naming the extra, not an import traceback."""
  code = ("import sys; sys.modules['absl'] = None; from vmd_jax.__main__ import main; "
          "main(['vmd-jax', 'train'])")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 2 and out.stderr == (
      "vmd-jax: the command line needs vmd_jax[train] (absl is not installed): "
      "pip install 'vmd_jax[train]'\n"), out.stderr[-2000:]


def test_unknown_command():
  out = run_cli("fly")
  assert out.returncode == 2 and "usage: vmd-jax {train|evaluate|sample|compile}" in out.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("trained")
  c = tiny_config("vmd", steps=10)
  c.prior.kind = "mixture"
  train.train_and_evaluate(c, str(workdir))
  return workdir, c


def _files(directory):
  """{relative path: (size, mtime)} of every file below ``directory``."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), directory)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, trained):
  """{name: path}: the trained VMD run ("vmd"), workdirs holding only a run's
  config.json and data_shape.json ("md4", "sudoku": the readers check their
  arguments before reading a checkpoint, so none is needed), a plain file
  ("file"), and input files a run cannot use."""
  import json
  d = tmp_path_factory.mktemp("inputs")
  paths = {"vmd": trained[0], "file": d / "file"}
  paths["file"].write_text("not a workdir")
  sudoku_config = config_lib.load_config_file(
      os.path.join(REPO, "configs", "sudoku_md4.py"))
  for name, c, shape in (("md4", tiny_config("md4"), (10, 2)),
                         ("sudoku", sudoku_config, (9, 81))):
    paths[name] = d / name
    paths[name].mkdir()
    (paths[name] / "config.json").write_text(json.dumps(c.to_dict()))
    (paths[name] / "data_shape.json").write_text(
        json.dumps({"vocab_size": shape[0], "seq_len": shape[1]}))
  table = np.zeros((3, 3))
  table[0, 1] = 1.0
  np.save(d / "v3.npy", table)  # a joint over 3 tokens; the run has 10
  np.save(d / "half.npy", np.full((10, 10), 0.005))  # sums to 0.5
  np.save(d / "n3.npy", np.full((10, 10, 10), 0.001))  # sequences of 3; the run's are 2
  with open(os.path.join(REPO, "tests", "data", "sudoku",
                         "sudoku_kaggle1m_10k_jerod92.csv")) as f:
    header, *rows = [next(f) for _ in range(4)]
  (d / "header_only.csv").write_text(header)
  (d / "three.csv").write_text(header + "".join(rows))
  (d / "bad_cell.csv").write_text(header + "x" + rows[0][1:])
  (d / "not_npy.npy").write_bytes(b"\x80\x04not a numpy file")  # a pickle's first bytes
  for name in ("v3.npy", "half.npy", "n3.npy", "not_npy.npy", "header_only.csv", "three.csv",
               "bad_cell.csv"):
    paths[name.split(".")[0]] = d / name
  return paths


@pytest.mark.parametrize("workdir,args,message", [
    ("vmd", ["sample", "--order=randm"],
     "--order=randm: unknown sampling order; known orders: ['ancestral', "),
    ("vmd", ["evaluate", "--settings=randm:1"],
     "--settings=randm:1: config.eval.settings order = 'randm'; accepted values: "),
    ("vmd", ["evaluate", "--settings=random:0"],
     "--settings=random:0: config.eval.settings item 'random:0': expected ORDER:NFE"),
    ("md4", ["sample", "--prior=mixture"], "--prior=mixture needs a VMD run; {md4} is a "
                                           "'md4' run"),
    ("vmd", ["evaluate", "--data={v3}"], "{v3}: a vocabulary of 3 tokens, but the "
                                              "model in {vmd} was trained on 10"),
    ("vmd", ["evaluate", "--data={half}"], "{half}: probabilities must sum to 1"),
    ("vmd", ["evaluate", "--data={n3}"], "{n3}: sequences of 3 tokens, but the model in "
                                         "{vmd} was trained on 2"),
    ("sudoku", ["evaluate", "--data={bad_cell}"],
     "{bad_cell}:2: puzzle cell 1 is 'x'; accepted: 0-9 or '.'"),
    ("sudoku", ["evaluate", "--data={header_only}"],
     "{header_only}: no puzzles after the header"),
    ("sudoku", ["sample", "--puzzles={three}", "--num=5"],
     "--puzzles={three} has 3 puzzles, fewer than --num=5"),
    ("sudoku", ["sample", "--puzzles={bad_cell}", "--num=1"],
     "--puzzles: {bad_cell}:2: puzzle cell 1 is 'x'"),
    ("vmd", ["evaluate", "--judge={md4}"], "--judge={md4} cannot judge this run: "
                                           "diffusion.block_size = 0, an AR judge needs 1"),
    ("vmd", ["evaluate", "stray_arg"], "unexpected arguments: ['stray_arg']"),
    ("vmd", ["sample", "stray_arg"], "unexpected arguments: ['stray_arg']"),
    ("vmd", ["evaluate", "--output=nosuchdir/x.json"],
     "cannot write the output {vmd}/nosuchdir/x.json: no directory {vmd}/nosuchdir"),
    ("vmd", ["evaluate", "--output=../../escape.json"],
     "--output=../../escape.json leaves the workdir {vmd}; name a file inside it"),
    ("vmd", ["evaluate", "--data={not_npy}"], "{not_npy}: not a .npy table (no numpy header"),
    ("vmd", ["sample", "--temperature=nan"],
     "--temperature=nan: temperature must be a finite number >= 0"),
    ("file", ["evaluate"], "--workdir={file} is a file, not a directory"),
    ("file", ["sample"], "--workdir={file} is a file, not a directory"),
])
def test_a_reader_refuses_bad_input_in_one_line_before_reading_a_checkpoint(
    inputs, workdir, args, message):
  """``vmd-jax evaluate`` / ``sample``: exit 2, one line naming the culprit, no
  traceback, nothing written; checked before the checkpoint is read (the "md4"
  and "sudoku" workdirs have none)."""
  fill = lambda text: text.format(**{k: str(v) for k, v in inputs.items()})
  command, *rest = args
  before = _files(inputs["vmd"])
  out = run_cli(command, f"--workdir={inputs[workdir]}", *map(fill, rest))
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, out.stderr[-3000:]
  assert lines[0].startswith(f"vmd-jax {command}: error: {fill(message)}"), lines
  assert _files(inputs["vmd"]) == before


def _evaluate_in_process(workdir, patch, *args):
  """``vmd-jax evaluate --workdir=workdir ARGS`` in a process that first runs ``patch``."""
  code = (f"import os; from vmd_jax.trainer import cli, io\n{patch}\n"
          f"cli.run(['vmd-jax', 'evaluate', '--workdir={workdir}', *{list(args)!r}])")
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)


def test_evaluate_refuses_a_read_only_workdir_before_evaluating(trained):
  """A workdir it may not write to (``os.access``, faked: as root every chmod'ed
  folder is writable) is refused up front, in one line naming the output."""
  workdir, _ = trained
  before = _files(workdir)
  out = _evaluate_in_process(workdir, (
      "access = os.access\n"
      f"os.access = lambda p, m, **k: (os.fspath(p) != {str(workdir)!r} or not m & os.W_OK)"
      " and access(p, m, **k)"))
  assert out.returncode == 2, out.stderr[-3000:]
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert lines == [f"vmd-jax evaluate: error: cannot write the output {workdir}/eval_latest.json: "
                   f"{workdir} is not writable"], out.stderr[-3000:]
  assert _files(workdir) == before


def test_evaluate_that_cannot_write_at_the_end_prints_its_results(trained):
  """A write that fails after the evaluation (the disk filled up, the folder was
  made read-only meanwhile): the results on stdout, then one line naming the file."""
  workdir, _ = trained
  before = _files(workdir)
  out = _evaluate_in_process(workdir, (
      "def refuse(path, obj):\n"
      "  raise PermissionError(13, 'Permission denied', f'{path}.1234.tmp')\n"
      "io.write_json = refuse"), "--settings=random:1", "--output=late.json")
  assert out.returncode == 2, out.stderr[-3000:]
  assert "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"vmd-jax evaluate: error: could not write {workdir}/late.json: Permission denied "
      "(the results are on stdout)"), out.stderr[-3000:]
  import json
  result = json.loads(out.stdout)
  assert result["step"] == 10 and "nelbo_bits_per_token" in result["nelbo"]
  assert set(result["samples"]) == {"random:1", "random:1/mixture"}
  assert _files(workdir) == before


def test_load_restores_the_ema_parameters_only(trained):
  workdir, c = trained
  model, params, config = vmd_jax.load(str(workdir))
  assert config.to_dict() == c.to_dict() and model.vocab_size == 10
  from vmd_jax.trainer import build, checkpoint, state as state_lib
  fresh = state_lib.init_state(build.build_model(c, 10, 2), state_lib.make_optimizer(c.train),
                               jax.random.key(1), np.zeros((1, 2), np.int32))
  saved = checkpoint.Checkpointer(workdir / "checkpoints").restore(fresh)  # the whole state
  assert jax.tree.structure(params) == jax.tree.structure(saved.ema_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(saved.ema_params)):
    np.testing.assert_array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in
                 zip(jax.tree.leaves(params), jax.tree.leaves(saved.params)))  # EMA, not params
  samples, calls = model.sample(params, jax.random.key(0), np.full((3, 2), 10, np.int32), 2,
                                "random")
  assert samples.shape == (3, 2) and int(samples.max()) < 10 and int(calls) == 2


def test_sample_command_prints_samples(trained):
  workdir, _ = trained
  out = run_cli("sample", f"--workdir={workdir}", "--num=5", "--steps=2", "--order=random",
                "--prior=mixture", timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Given directory is read only" not in out.stderr  # orbax's notice, dropped
  header, *rows = out.stdout.strip().split("\n\n")
  assert header.startswith("# 5 samples of") and "2 network calls" in header
  assert len(rows) == 5
  for row in rows:
    tokens = [int(v) for v in row.split()]
    assert len(tokens) == 2 and all(0 <= v < 10 for v in tokens)


def test_evaluate_on_a_table_file_reads_its_shape(trained, tmp_path):
  """A run trained on a named table, re-evaluated on a (V,) * N .npy table; it
  writes eval_table.json and nothing else: not the training run's figures of the
  2-token joint, nor the mixture prior it fits (prior.npz removed here)."""
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(trained[0], workdir)
  (workdir / "prior.npz").unlink()
  before = _files(workdir)
  assert any(name.startswith("joint_random_2") for name in before)  # training's figure
  table = np.zeros((10, 10))
  table[np.arange(10), (np.arange(10) + 1) % 10] = 0.1  # two_token_uniform itself
  np.save(tmp_path / "table.npy", table)
  out = run_cli("evaluate", f"--workdir={workdir}", f"--data={tmp_path / 'table.npy'}",
                "--settings=random:2", timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  after = _files(workdir)
  # Named for what changed (the data file and the settings), never the training's
  # eval.json, which stays as it was with every other file; the last line says where.
  name = "eval_table_random_2.json"
  assert (workdir / name).is_file()
  assert {k: v for k, v in after.items() if k != name} == before
  assert out.stderr.strip().splitlines()[-1] == f"vmd-jax evaluate: results in {workdir}/{name}"
  printed = json.loads(out.stdout)  # the whole result, as in the file: NELBO and samples
  assert printed == json.loads((workdir / name).read_text())
  assert set(printed["samples"]) == {"random:2", "random:2/mixture"}  # the prior fitted, not saved
  assert printed["nelbo"]["eval_tokens"] > 0


def test_a_run_from_before_a_config_field_loads_with_its_default(tmp_path):
  """config.json written before eval.prime_unit existed: load_config fills it in
  (and any other missing field) from base_config, keeping every saved value."""
  import json
  from vmd_jax.trainer.load import load_config
  saved = tiny_config("md4").to_dict()
  saved["train"]["lr"] = 0.0123
  del saved["eval"]["prime_unit"]
  del saved["mesh"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = load_config(tmp_path)
  assert config.eval.prime_unit == "token" and config.mesh.data == -1
  assert config.train.lr == 0.0123 and config.model.width == 16


def _traceback_of(source: str, filename: str, name: str, exc_type=Exception):
  """(type, value, traceback) of calling ``name`` defined by ``source`` in ``filename``."""
  scope = {}
  exec(compile(source, filename, "exec"), scope)
  try:
    scope[name]()
  except exc_type as e:
    return type(e), e, e.__traceback__.tb_next  # from the function's own frame outward


@pytest.mark.parametrize("source,filename,name,dropped", [
    # Python 3.12: orbax's read coroutine finalised with its read's error.
    ("def _read_array_index_and_device_put():\n  raise Exception('Encountered error')",
     "/site-packages/orbax/checkpoint/_src/serialization/serialization.py",
     "_read_array_index_and_device_put", True),
    ("def _read_array_index_and_device_put():\n  raise Exception('Encountered error')",
     "/home/me/my_reader.py", "_read_array_index_and_device_put", False),
    # asyncio's "Task exception was never retrieved" for orbax's deserialising task.
    ("def async_deserialize():\n  raise ValueError('NOT_FOUND: Error opening \"zarr\" driver')",
     "/site-packages/orbax/checkpoint/_src/serialization/serialization.py",
     "async_deserialize", True),
    ("def async_deserialize():\n  raise ValueError('NOT_FOUND')",
     "/home/me/my_reader.py", "async_deserialize", False),
    # tensorstore's threads calling into orbax's closed event loop.
    ("def call_soon_threadsafe():\n  raise RuntimeError('Event loop is closed')",
     "/usr/lib/python3.11/asyncio/base_events.py", "call_soon_threadsafe", True),
    ("def call_later():\n  raise RuntimeError('Event loop is closed')",
     "/usr/lib/python3.11/asyncio/base_events.py", "call_later", False),
    ("def call_soon_threadsafe():\n  raise RuntimeError('something else')",
     "/usr/lib/python3.11/asyncio/base_events.py", "call_soon_threadsafe", False),
])
def test_only_reports_of_abandoned_checkpoint_reads_are_dropped(source, filename, name,
                                                                 dropped):
  from vmd_jax.trainer import cli
  assert checkpoint._is_abandoned_read(*_traceback_of(source, filename, name)) is dropped


def test_asyncio_logs_of_abandoned_reads_are_dropped_and_others_kept():
  """asyncio logs "Task exception was never retrieved" with the task's exception."""
  import logging
  from vmd_jax.trainer import cli
  source = "def _read_array_index_and_device_put():\n  raise Exception('Encountered error')"
  record = lambda filename: logging.LogRecord(
      "asyncio", logging.ERROR, "base_events.py", 1, "Task exception was never retrieved",
      None, _traceback_of(source, filename, "_read_array_index_and_device_put"))
  keep = checkpoint._AbandonedReadRecords().filter
  assert not keep(record("/site-packages/orbax/checkpoint/_src/serialization/serialization.py"))
  assert keep(record("/home/me/my_reader.py"))
  assert keep(logging.LogRecord("x", logging.INFO, "f.py", 1, "no exception", None, None))
