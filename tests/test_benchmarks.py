"""The benchmark scripts run end to end on a tiny model and report what they
claim: calls made by each sampler, a train step's FLOPs and timings. (Their speed
goals live in benchmarks/, never here.)"""

import json
import subprocess
import sys

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
