#!/usr/bin/env bash
# Issue #10's GPU rows: train and sampler throughput and MFU at md4's text8 size.
#
#   bash benchmarks/gpu_rows.sh wheels          # here (with PyPI): .whl/ for a machine
#                                               # whose python3 lacks ml-collections
#   bash benchmarks/gpu_rows.sh train OUT       # on the GPU: accelerator.py's train rows
#   bash benchmarks/gpu_rows.sh sample OUT      # on the GPU: its sample rows, sampler_throughput
#                                               # one block
#   bash benchmarks/gpu_rows.sh tests OUT       # on the GPU: the math's tests there
#   bash benchmarks/gpu_rows.sh blocks OUT      # on the GPU: sampler_throughput's block rows
#
# On the GPU, from the project root, with a python3 that has jax (CUDA), flax, optax,
# orbax-checkpoint, chex, etils, pytest and pytest-xdist (an image with them, or
# launch/setup.sh plus `pip install "jax[cuda12]"`); wheels in .whl/ are installed
# first. TensorFlow is not needed: the rows use the trainer's step and batches, not
# its summary writer or tfds. Every script writes its JSON under OUT after each row,
# so a run cut short keeps what it measured, and a failing script does not stop the
# next one (the part exits 1 at the end). ACCELERATOR_ARGS and SAMPLER_ARGS are
# appended to the two scripts' flags (a later flag wins: tests/test_benchmarks.py
# runs the parts on a tiny model). Then: benchmarks/results_gpu.json and docs/results.md.
set -uo pipefail
part=${1:?usage: gpu_rows.sh wheels|train|sample|tests|blocks [OUT]}
out=${2:-benchmarks/gpu_out}

if [[ $part == wheels ]]; then
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0 || exit 1
  ls .whl
  exit 0
fi

mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade \
    --target /tmp/vmd_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/vmd_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# Let JAX take more of the GPU than its default 75% (the remat-free variants).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$out/gpu_$part.txt" 2>&1
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())" \
  2>&1 | tee -a "$out/gpu_$part.txt"

rc=0
run() {  # run LOG COMMAND...: its output, less absl's INFO / WARNING lines, to LOG too
  local log=$1; shift
  "$@" 2>&1 | grep -v "^[IW][0-9]\{4\} " | tee "$log"
  (( PIPESTATUS[0] == 0 )) || rc=1
}
sampler() {  # md4's size in bf16, the CPU rows' script
  run "$out/sampler_$1.log" python3 benchmarks/sampler_throughput.py --parts="$1" \
    --width=768 --depth=12 --num_heads=12 --set=model.dtype=bfloat16 \
    --set=model.attention="${ATTENTION:-cudnn}" --batch=64 --block_batch=64 \
    --block_sizes=16 --cache_segments=1 --repeats=2 --warmup_runs=1 \
    --output="$out/sampler_$1.json" ${SAMPLER_ARGS:-}
}
case $part in
  train)  # three variants (accelerator.py --variants): batch 256 without remat, 512 with
    run "$out/accelerator_train.log" python3 benchmarks/accelerator.py --parts=train \
      --output="$out/accelerator_train.json" ${ACCELERATOR_ARGS:-} ;;
  sample)  # batch 512: a call at every step, first hitting; then the one-block rows
    run "$out/accelerator_sample.log" python3 benchmarks/accelerator.py --parts=sample \
      --output="$out/accelerator_sample.json" ${ACCELERATOR_ARGS:-}
    sampler one_block ;;
  blocks)  # blocks of 16 with and without the KV cache
    sampler blocks ;;
  tests)  # exact NELBOs, samplers' joints, KV cache, on the GPU's kernels; full float32
          # matmuls, since the tests compare network outputs at 1e-5 and JAX's GPU
          # default rounds float32 matmul inputs to TF32
    JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false run \
      "$out/tests.log" python3 -m pytest -p no:cacheprovider -o addopts="" -n 4 -q \
      tests/test_losses.py tests/test_sampling.py tests/test_block.py tests/test_prime.py \
      tests/test_genmd4.py tests/test_schedules.py tests/test_models.py tests/test_prior.py \
      tests/test_precision.py --junitxml="$out/tests.xml" ;;
  *) echo "unknown part $part: wheels, train, sample, tests or blocks" >&2; exit 2 ;;
esac
exit $rc
