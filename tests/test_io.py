"""Run files: atomic writes, JSON that refuses NaN, ordinary permissions."""

import json
import math
import os
import stat

import pytest

from vmd_jax.trainer import io


def test_atomic_write_failure_keeps_old_file(tmp_path):
  path = tmp_path / "out.txt"
  path.write_text("old")
  with pytest.raises(RuntimeError):
    with io.atomic_write_path(path) as tmp:
      tmp.write_text("half")
      raise RuntimeError("writer failed")
  assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
  with io.atomic_write_path(path) as tmp:
    tmp.write_text("new")
  assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_json_is_valid_and_world_readable(tmp_path):
  old = os.umask(0o022)
  try:
    io.write_json(tmp_path / "eval.json", {"bpc": 1.5, "nested": {"n": 3}})
  finally:
    os.umask(old)
  assert json.loads((tmp_path / "eval.json").read_text()) == {"bpc": 1.5, "nested": {"n": 3}}
  assert stat.S_IMODE((tmp_path / "eval.json").stat().st_mode) == 0o644


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_json_refuses_non_finite_numbers(tmp_path, bad):
  (tmp_path / "eval.json").write_text("{}")
  with pytest.raises(ValueError, match="Out of range float"):
    io.write_json(tmp_path / "eval.json", {"nelbo": bad})
  assert (tmp_path / "eval.json").read_text() == "{}"
  assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_saved_config_holds_absolute_local_data_paths(tmp_path, monkeypatch):
  """config.json's data paths resolve from any directory: local paths made
  absolute against the current one (each of a comma-separated list, ``~``
  expanded); URLs, empty fields and named sources kept."""
  from vmd_jax.trainer import config as config_lib
  monkeypatch.chdir(tmp_path)
  c = config_lib.base_config()
  c.data.sudoku.train = "a.csv, sub/b.csv"
  c.data.sudoku.eval = "gs://bucket/eval.csv"
  c.data.synthetic.npy_path = "~/t.npy"
  c.data.text8.path = "python-docs"
  saved = config_lib.with_absolute_paths(c).data
  assert saved.sudoku.train == f"{tmp_path}/a.csv,{tmp_path}/sub/b.csv"
  assert saved.sudoku.eval == "gs://bucket/eval.csv"
  assert saved.synthetic.npy_path == os.path.join(os.path.expanduser("~"), "t.npy")
  assert (saved.text8.path, saved.text8.data_dir) == ("python-docs", "")
  assert c.data.sudoku.train == "a.csv, sub/b.csv"  # the run's own config is unchanged
