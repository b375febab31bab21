"""End to end on real data: Sudoku fixtures (tests/data/sudoku) and text8-format local text.

Tiny models and few steps: these check the plumbing (configs, data, training,
eval.json, re-evaluation on another CSV), not the numbers.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vmd_jax.trainer import config as config_lib, evaluate, train

REPO = Path(__file__).resolve().parents[1]
SUDOKU_CSV = REPO / "tests" / "data" / "sudoku" / "sudoku_rohanrao9m_10k_tilmanschweitzer.csv"
TEXT8_FIXTURE = next((REPO / "tests" / "data" / "text8").glob("*.txt"))
SUDOKU_SETTINGS = "top_prob:2,top_prob_margin:2"


def _csv_slice(src: Path, dst: Path, start: int, rows: int) -> Path:
  lines = src.read_text().splitlines()
  dst.write_text("\n".join([lines[0]] + lines[1 + start:1 + start + rows]) + "\n")
  return dst


def _tiny(c, steps=6):
  c.model.width = c.model.encoder_width = 16
  c.model.depth = c.model.encoder_depth = 1
  c.model.num_heads = c.model.encoder_heads = 2
  c.train.batch_size = 8
  c.train.num_steps = steps
  c.train.warmup_steps = 2
  c.train.log_every = 3
  c.train.checkpoint_every = steps
  return c


@pytest.fixture(scope="module")
def sudoku_csvs(tmp_path_factory):
  d = tmp_path_factory.mktemp("sudoku_data")
  return (_csv_slice(SUDOKU_CSV, d / "train.csv", 0, 48),
          _csv_slice(SUDOKU_CSV, d / "held_out.csv", 48, 16),
          _csv_slice(SUDOKU_CSV, d / "other.csv", 64, 12))


@pytest.mark.parametrize("kind", ["md4", "vmd"])
def test_sudoku_config_defaults(kind):
  """The shipped configs name the public files under VMD_SUDOKU_DIR (default
  data/sudoku) and carry the paper's settings."""
  c = config_lib.validate(config_lib.load_config_file(str(REPO / "configs" / f"sudoku_{kind}.py")))
  assert c.data.name == "sudoku" and c.model.kind == kind and c.data.num_eval == 1000
  train_paths = c.data.sudoku.train.split(",")
  assert len(train_paths) == 2 and c.data.sudoku.eval not in train_paths
  names = sorted(Path(p).name for p in train_paths + [c.data.sudoku.eval])
  assert names == sorted(p.name for p in SUDOKU_CSV.parent.glob("*.csv"))
  assert [s for s in config_lib.parse_eval_settings(c.eval.settings)] == [
      (o, n) for n in (5, 10, 20) for o in ("top_prob", "top_prob_margin")]


def test_sudoku_train_evaluate_and_reevaluate(tmp_path, sudoku_csvs, monkeypatch):
  """Trained on CSVs named by relative paths (config.json keeps them absolute);
  re-evaluated from another directory: on its own held-out CSV, then on another
  CSV, reading only that file."""
  train_csv, held_out, other = sudoku_csvs
  (tmp_path / "data").mkdir()
  for path in (train_csv, held_out):
    (tmp_path / "data" / path.name).write_text(path.read_text())
  monkeypatch.chdir(tmp_path)
  c = _tiny(config_lib.load_config_file(str(REPO / "configs" / "sudoku_md4.py")))
  c.data.sudoku.train = f"data/{train_csv.name}"
  c.data.sudoku.eval = f"data/{held_out.name}"
  c.data.num_eval = 14  # the first 14 of 16; re-evaluation on 12 rows takes all 12
  c.eval.settings = SUDOKU_SETTINGS
  c.eval.batch_size = 16
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, str(workdir))

  result = json.loads((workdir / "eval.json").read_text())
  assert set(result["samples"]) == set(SUDOKU_SETTINGS.split(","))
  for metrics in result["samples"].values():
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_puzzles"] == 14
    assert 1 <= metrics["nfe"] <= 2
  assert math.isfinite(result["nelbo"]["nelbo_bits_per_token"])
  assert result["nelbo"]["eval_tokens"] == 14 * 81

  monkeypatch.chdir(workdir)  # where data/train.csv and data/held_out.csv are not
  saved = json.loads((workdir / "config.json").read_text())["data"]
  assert saved["sudoku"]["eval"] == str(tmp_path / "data" / held_out.name)
  again = evaluate.evaluate_workdir(str(workdir), settings="top_prob_margin:2",
                                    output="again.json")
  assert again["nelbo"] == result["nelbo"]  # the same rows, the same parameters and key
  out = evaluate.evaluate_workdir(str(workdir), data=str(other), settings="top_prob_margin:2")
  written = json.loads((workdir / "eval_other_top_prob_margin_2.json").read_text())  # data, settings
  assert set(written["samples"]) == {"top_prob_margin:2"}
  for metrics in written["samples"].values():
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["num_puzzles"] == 12
  assert written["nelbo"]["eval_tokens"] == 12 * 81
  assert out["samples"].keys() == written["samples"].keys()

  # The command line on valid puzzles: each printed grid is complete and keeps every
  # given of its puzzle (the givens stay fixed; only the empty cells are drawn).
  from vmd_jax.data.sudoku import load_sudoku_csv
  cli = subprocess.run([sys.executable, "-m", "vmd_jax", "sample", f"--workdir={workdir}",
                        f"--puzzles={other}", "--num=2", "--steps=9", "--order=top_prob"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert cli.returncode == 0, cli.stderr[-3000:]
  header, *grids = cli.stdout.strip().split("\n\n")
  assert header.startswith("# 2 samples of") and len(grids) == 2, cli.stdout[-2000:]
  puzzles = load_sudoku_csv(other).puzzles[:2]
  for grid, puzzle in zip(grids, puzzles):
    digits = np.array([int(ch) for ch in grid if ch.isdigit()])
    assert digits.shape == (81,) and set(digits) <= set(range(1, 10)), grid
    np.testing.assert_array_equal(digits[puzzle != 0], puzzle[puzzle != 0])


def test_sudoku_missing_csv_fails_before_training(tmp_path, sudoku_csvs):
  c = _tiny(config_lib.load_config_file(str(REPO / "configs" / "sudoku_md4.py")))
  missing = tmp_path / "no_such_puzzles.csv"
  c.data.sudoku.train = f"{sudoku_csvs[0]},{missing}"
  c.data.sudoku.eval = str(sudoku_csvs[1])
  c.data.num_eval = 0
  workdir = tmp_path / "run"
  with pytest.raises(train.BadSetup, match="Sudoku file not found: .*no_such_puzzles.csv"):
    train.train_and_evaluate(c, str(workdir))
  assert os.listdir(workdir) == [".lock"]  # no config.json, checkpoints or eval.json


def test_text8_local_train_and_bpc(tmp_path):
  c = _tiny(config_lib.load_config_file(str(REPO / "configs" / "text8_md4.py")))
  c.data.text8.source = "local"
  c.data.text8.path = str(TEXT8_FIXTURE)
  c.data.text8.data_dir = str(tmp_path / "tfds")
  c.data.seq_len = 64
  c.eval.batch_size = 64
  c.eval.nelbo_samples = 2
  c.eval.settings = "ancestral:4"
  workdir = tmp_path / "run"
  train.train_and_evaluate(c, str(workdir))

  result = json.loads((workdir / "eval.json").read_text())
  nelbo = result["nelbo"]
  from vmd_jax.data import text_sources
  test_chars = len(text_sources.read_local_text(TEXT8_FIXTURE))
  s, e = text_sources.split_bounds(test_chars)["test"]
  assert nelbo["eval_tokens"] == e - s
  assert 0 < nelbo["nelbo_bits_per_token"] < 20
  assert nelbo["nelbo_bits_per_token_stderr"] > 0
  assert nelbo["time_samples_per_sequence"] == 2
  texts = result["samples"]["ancestral:4"]["text"]
  assert len(texts) == 4 and all(len(t) == 64 for t in texts)
  assert all(set(t) <= set("abcdefghijklmnopqrstuvwxyz ") for t in texts)
  # The same samples reach TensorBoard as text, at the evaluated step.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
  events.Reload()
  [logged] = events.Tensors("eval/ancestral_4/text/text_summary")  # summaries.tag
  assert logged.step == result["step"]
  assert logged.tensor_proto.string_val == [evaluate.samples_markdown(texts).encode()]


@pytest.mark.parametrize("name", ["text8_bd3", "text8_vmd"])
def test_text8_block_configs_train_tiny(tmp_path, name):
  """The block configs (L' = 4, clipped training rate) train at a tiny size and
  report the unclipped test BPC; block VMD adds the KL of every block."""
  c = _tiny(config_lib.load_config_file(str(REPO / "configs" / f"{name}.py")), steps=4)
  c.data.text8.source = "local"
  c.data.text8.path = str(TEXT8_FIXTURE)
  c.data.text8.data_dir = str(tmp_path / "tfds")
  c.data.seq_len = 32
  c.eval.batch_size = 128
  c.eval.settings = "ancestral:8"
  assert c.diffusion.block_size == 4 and c.diffusion.train_mask_rate_min == 0.45
  train.train_and_evaluate(c, str(tmp_path / "run"))
  result = json.loads((tmp_path / "run" / "eval.json").read_text())
  # Untrained and near uniform: about log2(27) = 4.75 bits per character.
  assert abs(result["nelbo"]["nelbo_bits_per_token"] - math.log2(27)) < 0.5
  texts = result["samples"]["ancestral:8"]["text"]
  assert len(texts) == 4 and all(len(t) == 32 for t in texts)


@pytest.mark.parametrize("kind", ["md4", "vmd"])
def test_reevaluation_never_fits_a_prior_on_the_evaluation_puzzles(tmp_path, sudoku_csvs, kind):
  """``evaluate --data=CSV`` reads only that CSV, except for a VMD run with a
  mixture prior, which may fit the prior again (prior.npz of another step or
  from an older version): it keeps its training files for that."""
  train_csv, held_out, other = sudoku_csvs
  c = config_lib.load_config_file(str(REPO / "configs" / f"sudoku_{kind}.py"))
  c.data.sudoku.train, c.data.sudoku.eval, c.data.num_eval = str(train_csv), str(held_out), 0
  if kind == "vmd":
    c.prior.kind = "mixture"
    (tmp_path / "prior.npz").write_bytes(b"")  # present, yet possibly stale
  evaluate.evaluation_dataset(c, str(tmp_path), str(other), None, 9, 81)
  assert c.data.sudoku.eval == str(other)
  assert c.data.sudoku.train == (str(train_csv) if kind == "vmd" else str(other))
