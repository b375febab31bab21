"""The benchmark scripts run end to end on a tiny model and report what they
claim: calls made by each sampler, a train step's FLOPs and timings. (Their speed
goals live in benchmarks/, never here.)"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from test_train import REPO


def run_script(name, *args):
  out = subprocess.run([sys.executable, f"benchmarks/{name}", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_sampler_throughput_counts_the_calls_each_sampler_makes(tmp_path):
  output = tmp_path / "sampler.json"
  run_script("sampler_throughput.py", "--width=16", "--depth=1", "--num_heads=2",
             "--length=8", "--batch=2", "--ancestral_steps=50", "--dense_steps=5",
             "--block_sizes=4", "--block_batch=2", "--steps_per_block=2",
             "--cache_segments=1,2", "--kv_lengths=8", "--kv_block=4", f"--output={output}")
  result = json.loads(output.read_text())
  assert result["settings"]["config"] == "configs/text8_md4.py"
  one = {(r["order"], r["steps"], r["skip_idle"]): r["nfe"] for r in result["rows"]
         if r["part"] == "one_block"}
  assert one[("ancestral", 5, False)] == 5  # md4's loop: a call at every step
  assert one[("first_hitting", 8, True)] == 8  # one call per token
  assert 1 <= one[("ancestral", 50, True)] <= 8 and 1 <= one[("ancestral", 100, True)] <= 8
  blocks = [r for r in result["rows"] if r["part"] == "blocks"]
  assert {(r["regime"], r["cache_segments"]) for r in blocks} == {
      (regime, s) for regime in ("one_token_per_step", "steps_per_block") for s in (0, 1, 2)}
  for r in blocks:  # 2 blocks of 4: 4 steps each, or --steps_per_block=2 each
    assert r["nfe"] == (8 if r["regime"] == "one_token_per_step" else 4), r
  assert [r["prefix"] for r in result["rows"] if r["part"] == "kv_prefix"] == [0, 2, 4, 6, 8]


def test_train_step_reports_flops_and_its_share_of_a_matmul(tmp_path):
  output = tmp_path / "train.json"
  run_script("train_step.py", "--width=16", "--depth=1", "--num_heads=2", "--batch=2",
             "--repeats=1", f"--output={output}")
  result = json.loads(output.read_text())
  assert result["train_step"]["flops_per_step"] > 3 * result["forward"]["flops"] / 2 > 0
  assert 0 < result["share_of_matmul"] and result["peak_rss_mib"] > 0


def test_gpu_rows_script_runs_the_trainers_step_and_the_samplers(tmp_path):
  """benchmarks/gpu_rows.sh's train and sample parts, as on the GPU but tiny (a later
  flag wins; its blocks part is the sample part's sampler_throughput call with
  --parts=blocks, whose rows test_sampler_throughput_... checks)."""
  peak = 1e12
  tiny = ("--set=model.width=16 --set=model.depth=1 --set=model.num_heads=2 "
          "--set=train.batch_size=2 --set=data.seq_len=16 --dtype=float32 --steps=3 "
          f"--warmup=2 --sample_batch=2 --sample_steps=5 --sample_attention=xla --peak={peak}")
  sampler = ("--width=16 --depth=1 --num_heads=2 --length=8 --batch=2 --block_batch=2 "
             "--set=model.dtype=float32 --block_sizes=")
  env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
         "ATTENTION": "xla"}

  def part(name, accelerator_args="", sampler_args=""):
    return subprocess.run(["bash", "benchmarks/gpu_rows.sh", name, str(tmp_path)], cwd=REPO,
                          env={**env, "ACCELERATOR_ARGS": accelerator_args,
                               "SAMPLER_ARGS": sampler_args},
                          capture_output=True, text=True, timeout=600)

  out = part("train", f"{tiny} --variants=einsum+remat,xla+batch=4 --parts=train,sample")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  rows = json.loads((tmp_path / "accelerator_train.json").read_text())["rows"]
  train = {r["variant"]: r for r in rows if r["part"] == "train"}
  remat, plain = train["einsum+remat"], train["xla+batch=4"]
  assert (remat["batch"], plain["batch"]) == (2, 4) and remat["remat"] and not plain["remat"]
  assert plain["parameters"] == remat["parameters"] > 0
  # Model FLOPs (train.model_flops_per_device, tested in test_sharding.py) leave out
  # the recomputation that XLA's own count of the remat step adds.
  assert plain["model_flops_per_step"] > remat["model_flops_per_step"] > 0
  assert remat["xla_flops_per_step"] > 1.1 * remat["model_flops_per_step"]
  for r in (plain, remat):
    assert r["steps"] == 3
    assert r["tokens_per_sec"] == pytest.approx(r["steps_per_sec"] * r["batch"] * 16)
    assert r["mfu"] == pytest.approx(r["model_flops_per_step"] * r["steps_per_sec"] / peak)
    assert r["loss_first"] > 0 and r["loss_last"] > 0
  sample = {r["order"]: r for r in rows if r["part"] == "sample"}
  assert sample["ancestral"]["nfe"] == 5 and sample["first_hitting"]["nfe"] == 16
  for r in sample.values():  # a call's FLOPs at this batch, times the calls made, per second
    assert 0 < r["forward_flops"] < remat["model_flops_per_step"]
    assert r["mfu"] == pytest.approx(r["forward_flops"] * r["nfe"] / r["seconds"] / peak)
  # A part whose first script fails (an unknown attention) still runs the next one,
  # and exits 1.
  out = part("sample", f"{tiny} --sample_attention=no", sampler + "4")
  assert out.returncode == 1 and "config.model.attention = 'no'" in out.stdout
  one = json.loads((tmp_path / "sampler_one_block.json").read_text())["rows"]
  assert {r["order"] for r in one} == {"ancestral", "first_hitting"}


def tiny_text8_flags(seq_len: int, steps: int, nfe: int) -> str:
  """EXTRA_ARGS for benchmarks/text8_cpu.sh: a tiny model on the text8-format fixture."""
  fixture = os.path.join(REPO, "tests", "data", "text8", "sqlite3_h_comments.txt")
  return (f"--config.data.text8.path={fixture} --config.data.seq_len={seq_len} "
          "--config.model.width=16 --config.model.depth=1 --config.model.num_heads=2 "
          f"--config.train.batch_size=8 --config.train.num_steps={steps} "
          f"--config.train.warmup_steps={steps // 2} --config.eval.batch_size=128 "
          f"--config.eval.settings=ancestral:{nfe}")


def test_text8_cpu_script_trains_a_row_and_archives_it(tmp_path):
  """benchmarks/text8_cpu.sh on the text8-format fixture, tiny: the frozen GenMD4
  row's 27 exponents stay at 1 (train.schedule_lr = 1e-12), its BPC is near
  log2(27) untrained, and the JSON keeps the command; a finished row is not run
  again, and an unknown row is named."""
  tiny = tiny_text8_flags(seq_len=32, steps=4, nfe=8)
  output = tmp_path / "rows.json"
  env = {**os.environ, "RUNS": str(tmp_path / "runs"), "OUTPUT": str(output),
         "PYTHON": sys.executable, "EXTRA_ARGS": tiny}
  script = lambda *rows: subprocess.run(["bash", "benchmarks/text8_cpu.sh", *rows], cwd=REPO,
                                        env=env, capture_output=True, text=True, timeout=600)
  out = script("genmd4_frozen")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  row = json.loads(output.read_text())["genmd4_frozen/seed0"]
  assert "--config.train.schedule_lr=1e-12" in row["command"] and tiny in row["command"]
  assert "--config.seed=0" in row["command"]
  assert row["step"] == 4 and row["test_characters"] > 0
  assert abs(row["test_bpc"] - math.log2(27)) < 0.5 and row["test_bpc_stderr"] > 0
  exponents = np.array(list(row["exponents"].values()))
  assert len(exponents) == 27 and np.all(np.abs(exponents - 1.0) < 1e-6)
  again = script("genmd4_frozen")
  assert again.returncode == 0 and "genmd4_frozen, seed 0: done" in again.stdout
  assert json.loads(output.read_text())["genmd4_frozen/seed0"] == row
  bad = script("gpt")
  assert bad.returncode == 2 and "unknown row 'gpt'" in bad.stderr


def test_frontier_pools_seeds_into_groups():
  """frontier.groups: runs named GROUP_s<seed> pooled per setting (mean, sample sd,
  range, n); any other name a group of its own."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("frontier", f"{REPO}/benchmarks/frontier.py")
  frontier = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(frontier)
  row = lambda bits, nfe, s: {"judge_bits_per_char": bits, "nfe": nfe, "seconds_per_sample": s}
  result = {"runs": {
      "bd3_s0": {"settings": {"ancestral:16": row(6.0, 16, 1.0)}},
      "bd3_s1": {"settings": {"ancestral:16": row(6.5, 16, 3.0)}},
      "bd3_s12": {"settings": {"ancestral:16": row(7.0, 16, 2.0)}},
      "md4": {"settings": {"ancestral:16": row(5.0, 15, 4.0)}}}}
  groups = frontier.groups(result)
  assert set(groups) == {"bd3", "md4"}
  bd3 = groups["bd3"]["ancestral:16"]
  assert bd3["n"] == 3 and bd3["judge_bits_per_char"] == pytest.approx(6.5)
  assert bd3["sd"] == pytest.approx(0.5) and (bd3["min"], bd3["max"]) == (6.0, 7.0)
  assert bd3["seconds_per_sample"] == pytest.approx(2.0)
  assert groups["md4"]["ancestral:16"] == {"judge_bits_per_char": 5.0, "sd": 0.0, "min": 5.0,
                                           "max": 5.0, "n": 1, "nfe": 15.0,
                                           "seconds_per_sample": 4.0}


def test_frontier_scores_each_setting_with_the_judge(tmp_path):
  """benchmarks/frontier.py on two tiny runs of the fixture (an AR judge and block
  MDM, via text8_cpu.sh): per block run 1, 2 and 4 calls per block, each row's
  network calls, seconds and judge statistics, the real windows' row, the plot.
  Barely trained, the judge is near uniform: about log2(27) bits per character."""
  tiny = tiny_text8_flags(seq_len=16, steps=2, nfe=16)
  runs = tmp_path / "runs"
  env = {**os.environ, "RUNS": str(runs), "OUTPUT": str(tmp_path / "rows.json"),
         "PYTHON": sys.executable, "EXTRA_ARGS": tiny}
  out = subprocess.run(["bash", "benchmarks/text8_cpu.sh", "judge", "bd3"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  output, plot = tmp_path / "frontier.json", tmp_path / "frontier.png"
  out = subprocess.run(
      [sys.executable, "benchmarks/frontier.py", f"--judge={runs}/judge/seed0",
       f"--run=bd3={runs}/bd3/seed0", "--num=3", "--batch=2", f"--output={output}",
       f"--plot={plot}"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(output.read_text())
  rows = result["runs"]["bd3"]["settings"]
  assert result["runs"]["bd3"]["grid"] == "cosine"  # text8_md4's eval.grid, which text8_bd3 keeps
  assert list(rows) == ["ancestral:4", "ancestral:8", "ancestral:16"]  # K = 16 / 4 blocks
  # One call per block is exactly K calls; ancestral skips a step that reveals nothing.
  assert rows["ancestral:4"]["nfe"] == 4
  assert all(4 < row["nfe"] <= int(k.split(":")[1]) for k, row in list(rows.items())[1:])
  for row in [result["reference"], *rows.values()]:
    assert abs(row["judge_bits_per_char"] - math.log2(27)) < 0.5, row
    assert 0 < row["unigram_entropy_bits"] <= math.log2(27) + 1e-9
    assert 0 <= row["repeated_4gram_share"] < 1
  assert all(row["seconds_per_sample"] > 0 for row in rows.values())
  assert plot.stat().st_size > 10_000
