#!/usr/bin/env bash
# The offline text8 rows of docs/results.md: small runs on Python's own documentation in
# text8's format (no internet here), then their eval.json gathered with the command.
#
#   bash benchmarks/text8_cpu.sh [ROW ...]     # rows: md4 bd3 vmd genmd4 genmd4_frozen
#                                              #       prime2 prime4 judge (default: all)
#   SEEDS="0 1 2" bash benchmarks/text8_cpu.sh md4 genmd4     # each row at each seed
#
# Each row trains configs/<config>.py for 2,000 steps at batch 32 on windows of 64
# characters with a 2-layer width-64 denoiser (the flags below) at config.seed = S
# for each S in SEEDS (default 0), into RUNS/<row>/seed<S> (RUNS: default
# runs/text8_cpu; a run whose eval.json is there is not run again), then writes
# OUTPUT (default benchmarks/results_text8_cpu.json): per "<row>/seed<S>", the
# command, the test bits per character and its standard error, and GenMD4's
# exponents. genmd4_frozen is GenMD4 with its exponents held at 1
# (train.schedule_lr = 1e-12): what the learned schedule adds beyond the two masks a
# GenMD4 step draws. prime2 and prime4 are MDM-Prime with l = 2 and 4 digits.
# judge is configs/text8_judge.py (block diffusion with L' = 1: an autoregressive
# model), the judge for `vmd-jax evaluate --judge=RUNS/judge/seed0`.
# vmd is configs/text8_vmd_bpc.py (block VMD at beta = 1, the likelihood row);
# vmd_cond the same with the conditional prior p(z_b | x^{<b}); vmd_b01 at beta = 0.1
# with N(0, I), and vmd_cond_b01 (configs/text8_vmd.py, the generation setting) with the
# conditional prior (the last two not run by default), where z is used. The ablation
# rows (not run by default) change one thing at a time (docs/text8_vmd.md):
# vmd_sinpos is text8_vmd as it was before it dropped sinusoidal absolute
# positions, bd3_sinpos block MDM with them, vmd_zero and vmd_sinpos_zero VMD
# whose latent projection starts at zero (so that it starts as exactly block MDM).
# EXTRA_ARGS is appended to every row's flags (a later flag wins:
# tests/test_benchmarks.py runs a row tiny on its fixture).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs/text8_cpu}
output=${OUTPUT:-benchmarks/results_text8_cpu.json}
python=${PYTHON:-.venv/bin/python}
all="md4 bd3 vmd vmd_cond genmd4 genmd4_frozen prime2 prime4 judge"
ablations="vmd_sinpos bd3_sinpos vmd_zero vmd_sinpos_zero"
low_beta="vmd_b01 vmd_cond_b01"
rows=("$@")
[[ ${#rows[@]} -gt 0 ]] || read -ra rows <<< "$all"

flags=(--config.data.text8.source=local --config.data.text8.data_dir="$runs/tfds"
  --config.data.seq_len=64 --config.model.width=64 --config.model.depth=2
  --config.model.num_heads=4 --config.model.encoder_width=64
  --config.model.encoder_depth=1 --config.model.encoder_heads=4
  --config.train.batch_size=32 --config.train.num_steps=2000 --config.train.lr=1e-3
  --config.train.warmup_steps=200 --config.train.ema_decay=0.999
  --config.eval.batch_size=64 --config.eval.nelbo_samples=4
  --config.eval.settings=ancestral:64)

for row in "${rows[@]}"; do
  case $row in
    md4|bd3|genmd4|judge) config=configs/text8_$row.py; extra=() ;;
    vmd) config=configs/text8_vmd_bpc.py; extra=() ;;
    genmd4_frozen) config=configs/text8_genmd4.py; extra=(--config.train.schedule_lr=1e-12) ;;
    prime2) config=configs/text8_prime.py; extra=(--config.diffusion.prime_digits=2) ;;
    prime4) config=configs/text8_prime.py; extra=(--config.diffusion.prime_digits=4) ;;
    vmd_cond) config=configs/text8_vmd_bpc.py; extra=(--config.prior.kind=conditional) ;;
    vmd_b01) config=configs/text8_vmd_bpc.py; extra=(--config.diffusion.beta=0.1) ;;
    vmd_cond_b01) config=configs/text8_vmd.py; extra=() ;;
    vmd_sinpos) config=configs/text8_vmd_bpc.py
      extra=(--config.model.position_embedding=sinusoidal) ;;
    bd3_sinpos) config=configs/text8_bd3.py; extra=(--config.model.position_embedding=sinusoidal) ;;
    vmd_zero) config=configs/text8_vmd_bpc.py; extra=(--config.model.latent_init=zeros) ;;
    vmd_sinpos_zero) config=configs/text8_vmd_bpc.py
      extra=(--config.model.position_embedding=sinusoidal --config.model.latent_init=zeros) ;;
    *) echo "text8_cpu.sh: unknown row '$row'; rows: $all $ablations $low_beta" >&2
       exit 2 ;;
  esac
  for seed in ${SEEDS:-0}; do
    run=$runs/$row/seed$seed
    if [[ -f $run/eval.json ]]; then echo "== $row, seed $seed: done ($run/eval.json)"; continue; fi
    command=("$python" -m vmd_jax.main --config="$config" --workdir="$run"
             "${flags[@]}" --config.seed="$seed" "${extra[@]}" ${EXTRA_ARGS:-})
    echo "== $row, seed $seed: ${command[*]}"
    "${command[@]}"
    printf '%s\n' "${command[@]}" > "$run/command.txt"
  done
done

"$python" - "$runs" "$output" "${SEEDS:-0}" "${rows[@]}" <<'PY'
import json, os, pathlib, platform, sys
runs, output, seeds, rows = (pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]),
                             sys.argv[3].split(), sys.argv[4:])
table = json.loads(output.read_text()) if output.exists() else {}
names = [f"{row}/seed{seed}" for row in rows for seed in seeds]
for name in names:
  result = json.loads((runs / name / "eval.json").read_text())
  nelbo = result["nelbo"]
  table[name] = {
      "command": " ".join((runs / name / "command.txt").read_text().split()),
      "machine": f"{platform.machine()} CPU, {len(os.sched_getaffinity(0))} cores",
      "step": result["step"],
      "test_bpc": round(nelbo["nelbo_bits_per_token"], 4),
      "test_bpc_stderr": round(nelbo["nelbo_bits_per_token_stderr"], 4),
      "test_characters": int(nelbo["eval_tokens"]),
      **({"exponents": result["schedule"]} if "schedule" in result else {}),
  }
output.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")
for name in names:
  print(f"{name}: {table[name]['test_bpc']:.3f} +- {table[name]['test_bpc_stderr']:.3f} BPC")
PY
