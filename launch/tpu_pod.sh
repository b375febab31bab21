#!/usr/bin/env bash
# Trains vmd_jax on a Cloud TPU VM pod slice, every worker one JAX process.
#
# Creates the TPU VM if it does not exist (else reuses it), copies this checkout
# (tracked files) to every worker, installs it there (launch/setup.sh, then
# jax[tpu]), and runs the trainer on --worker=all with --distributed (JAX finds
# the coordinator, process count and process id itself on a TPU pod). The
# workdir and the tfds data dir live in a gs:// bucket that every worker reads
# and writes (the TPU VM's service account needs access to it).
#
# Edit the defaults below (or set them in the environment), then, from the
# repository root, with gcloud logged in:
#
#   BUCKET=gs://my-bucket RUN=text8_md4 bash launch/tpu_pod.sh \
#       --config.data.text8.path=gs://my-bucket/text8.zip
#
# Arguments are passed to `python -m vmd_jax.main` after the ones set here.
# Environment:
#   PROJECT      gcloud project (default: gcloud's configured project)
#   ZONE         TPU zone, e.g. us-west4-a
#   TPU_NAME     TPU VM name (created if missing)
#   ACCELERATOR  accelerator type, e.g. v5litepod-16, v4-32, v5p-16
#   RUNTIME      TPU software version, e.g. v2-alpha-tpuv5-lite, tpu-ubuntu2204-base
#   BUCKET       gs://bucket for runs and data (required)
#   CONFIG       config file or packaged name (default text8_md4)
#   RUN          run name: the workdir is $BUCKET/runs/$RUN (default $CONFIG)
#   SKIP_SETUP   1: do not copy and reinstall the code (a rerun on the same pod)
set -euo pipefail
cd "$(dirname "$0")/.."

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-west4-a}"
TPU_NAME="${TPU_NAME:-vmd-jax-pod}"
ACCELERATOR="${ACCELERATOR:-v5litepod-16}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
BUCKET="${BUCKET:?set BUCKET=gs://your-bucket}"
CONFIG="${CONFIG:-text8_md4}"
RUN="${RUN:-$(basename "${CONFIG%.py}")}"
SKIP_SETUP="${SKIP_SETUP:-0}"

tpu() { gcloud compute tpus tpu-vm "$@" --zone="$ZONE" --project="$PROJECT"; }

if ! tpu describe "$TPU_NAME" >/dev/null 2>&1; then
  echo "creating $TPU_NAME ($ACCELERATOR, $RUNTIME) in $ZONE"
  tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
fi

if [[ "$SKIP_SETUP" != 1 ]]; then
  staging="$(mktemp -d)"
  trap 'rm -rf "$staging"' EXIT
  git ls-files -z | tar --null -czf "$staging/vmd_jax.tar.gz" -T -
  tpu scp "$staging/vmd_jax.tar.gz" "$TPU_NAME":~/vmd_jax.tar.gz --worker=all
  setup="set -e; rm -rf ~/vmd_jax; mkdir ~/vmd_jax; tar -xzf ~/vmd_jax.tar.gz -C ~/vmd_jax"
  setup+="; cd ~/vmd_jax; bash launch/setup.sh"
  setup+="; .venv/bin/pip install -q -c launch/constraints.txt 'jax[tpu]'"
  tpu ssh "$TPU_NAME" --worker=all --command="$setup"
fi

args=(--distributed "--config=$CONFIG" "--workdir=$BUCKET/runs/$RUN"
      "--config.data.text8.data_dir=$BUCKET/tensorflow_datasets" "$@")
tpu ssh "$TPU_NAME" --worker=all \
    --command="cd ~/vmd_jax && .venv/bin/python -m vmd_jax.main $(printf '%q ' "${args[@]}")"
