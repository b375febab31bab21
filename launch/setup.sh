#!/usr/bin/env bash
# Creates .venv with the pinned dependencies and vmd_jax installed (editable), on a CPU machine.
# GPU: afterwards `.venv/bin/pip install "jax[cuda12]==0.10.2"`; TPU: `"jax[tpu]==0.10.2"`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
