#!/usr/bin/env bash
# Issue #10's GPU rows: train and sampler throughput and MFU at md4's text8 size.
#
#   bash benchmarks/gpu_rows.sh wheels          # here (with PyPI): .whl/ for a machine
#                                               # whose python3 lacks ml-collections
#   bash benchmarks/gpu_rows.sh train OUT       # on the GPU, ~6 min on an H100 (estimated)
#   bash benchmarks/gpu_rows.sh sample OUT      # on the GPU, ~4 min
#   bash benchmarks/gpu_rows.sh tests OUT       # on the GPU: the exactness tests there
#
# On the GPU, from the project root, with a python3 that has jax (CUDA), flax, optax,
# orbax-checkpoint, chex and etils (an image with them, or launch/setup.sh plus
# `pip install "jax[cuda12]"`); wheels in .whl/ are installed first. TensorFlow is not
# needed: the rows use the trainer's step and batches, not its summary writer or tfds.
# Each part writes its JSON under OUT after every row, so a run cut short keeps what
# it measured. ACCELERATOR_ARGS and SAMPLER_ARGS are appended to the two scripts' flags
# (a later flag wins: tests/test_benchmarks.py runs the parts on a tiny model). Then: benchmarks/results_gpu.json and the README's GPU section.
set -euo pipefail
part=${1:?usage: gpu_rows.sh wheels|train|sample|tests [OUT]}
out=${2:-benchmarks/gpu_out}

if [[ $part == wheels ]]; then
  pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl ml-collections==1.1.0
  ls .whl
  exit 0
fi

mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/vmd_site .whl/*.whl
  export PYTHONPATH=/tmp/vmd_site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
# md4's batch on one GPU: XLA's attention keeps [512, 12, 256, 256] float32 scores per
# layer for the backward pass, so let JAX take more than its default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.95}
# The XLA-attention step is compiled twice (its count is every row's model FLOPs).
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/vmd_jax_xla_cache}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  | tee "$out/gpu_$part.txt" || true
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'orbax', o.__version__, jax.devices())" \
  | tee -a "$out/gpu_$part.txt"

quiet() { grep -v "^[IW][0-9]\{4\} " | tee "$1"; }  # absl's INFO / WARNING lines dropped
case $part in
  train)  # md4's size, batch 512 x 256, bf16: attention by cuDNN, cuDNN with remat, XLA
    python3 benchmarks/accelerator.py --parts=train --steps=200 \
      --output="$out/accelerator_train.json" ${ACCELERATOR_ARGS:-} 2>&1 | quiet "$out/accelerator_train.log" ;;
  sample)  # batch 512: a call at every step, first hitting; then the CPU rows' script
    python3 benchmarks/accelerator.py --parts=sample --output="$out/accelerator_sample.json" \
      ${ACCELERATOR_ARGS:-} 2>&1 | quiet "$out/accelerator_sample.log"
    python3 benchmarks/sampler_throughput.py --width=768 --depth=12 --num_heads=12 \
      --set=model.dtype=bfloat16 --set=model.attention="${ATTENTION:-cudnn}" --batch=64 \
      --block_batch=64 --parts=one_block,blocks --block_sizes=16 --cache_segments=1 \
      --repeats=2 --output="$out/sampler_md4.json" ${SAMPLER_ARGS:-} 2>&1 | quiet "$out/sampler_md4.log" ;;
  tests)  # the math's tests (exact NELBOs, samplers' joints, KV cache) on the GPU's numerics
    XLA_PYTHON_CLIENT_PREALLOCATE=false python3 -m pytest -p no:cacheprovider -n 4 -q \
      tests/test_losses.py tests/test_sampling.py tests/test_block.py tests/test_prime.py \
      tests/test_genmd4.py tests/test_schedules.py tests/test_models.py tests/test_prior.py \
      --junitxml="$out/tests.xml" 2>&1 | tail -40 | tee "$out/tests.log" ;;
  *) echo "unknown part $part: wheels, train, sample or tests" >&2; exit 2 ;;
esac
