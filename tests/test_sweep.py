"""Sweeps: every run trains, a failed run is marked and the others go on."""

import ml_collections
import pytest

from vmd_jax.trainer import sweep
from test_train import tiny_config


def test_a_failed_run_is_marked_and_the_sweep_goes_on(tmp_path):
  """The first run diverges (lr = 1e9): the second still trains, the table gives
  the first's error, and the sweep ends with SweepFailed (exit 1) naming it."""
  bad, good = tiny_config("md4", steps=6), tiny_config("md4", steps=6)
  bad.train.lr = 1e9
  config = ml_collections.ConfigDict({"runs": {"a_diverges": bad, "b_fine": good}})
  with pytest.raises(sweep.SweepFailed, match="sweep runs a_diverges failed") as e:
    sweep.run_sweep(config, str(tmp_path))
  assert e.value.exit_code == 1
  table = (tmp_path / "table.md").read_text()
  assert "| a_diverges | failed: training diverged at step" in table
  row = next(l for l in table.splitlines() if l.startswith("| b_fine |"))
  assert row.count("%") == 2 and (tmp_path / "b_fine" / "eval.json").exists()  # random:1, :2


def test_table_of_runs_whose_data_scores_no_accuracy():
  """text8's samples are text: the table gives the NELBO and leaves their cells empty."""
  results = {"md4": {"nelbo": {"nelbo_bits_per_token": 3.3431}, "samples": {
      "ancestral:64": {"text": "a b", "nfe": 64}}}}
  table = sweep.format_table(results)
  assert "| run | NELBO (bits/token) | ancestral:64 |" in table
  assert "| md4 | 3.343 |  |" in table


def test_on_several_processes_a_failed_run_ends_the_sweep(tmp_path, monkeypatch):
  """A set-up error may be one process's alone (a file on its own disk): going on
  there while the others train would pair collectives across runs, so on several
  processes the first failure ends the sweep."""
  import jax
  from vmd_jax.trainer import train

  def fail(config, workdir):
    raise train.BadSetup("no such file")
  monkeypatch.setattr(train, "train_and_evaluate", fail)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  config = ml_collections.ConfigDict({"runs": {"a": tiny_config("md4"), "b": tiny_config("md4")}})
  with pytest.raises(train.BadSetup, match="no such file"):
    sweep.run_sweep(config, str(tmp_path))
  assert not (tmp_path / "table.md").exists()
