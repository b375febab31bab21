#!/usr/bin/env bash
# Creates .venv with vmd_jax installed (editable) with the train, text8 and test
# extras, at the tested versions of launch/constraints.txt, on a CPU machine. TPUs,
# and `vmd-jax compile` on this machine (tests/test_compile.py, which CI runs): afterwards
# `.venv/bin/pip install -c launch/constraints.txt -e '.[tpu]'` (libtpu: a 213 MB
# wheel; JAX then probes for a TPU at start, so set JAX_PLATFORMS=cpu). GPU: afterwards
# `.venv/bin/pip install -c launch/constraints.txt "jax[cuda12]"`.
# Core only (losses and samplers): `pip install vmd_jax`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c launch/constraints.txt -e '.[test]'
