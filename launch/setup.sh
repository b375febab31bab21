#!/usr/bin/env bash
# Creates .venv with vmd_jax installed (editable) with every extra, at the tested
# versions of launch/constraints.txt, on a CPU machine. The tpu extra is libtpu
# (a 213 MB wheel, 684 MB installed): TPUs, and `vmd-jax compile` on this machine
# (tests/test_compile.py). GPU: afterwards
# `.venv/bin/pip install -c launch/constraints.txt "jax[cuda12]"`.
# Core only (losses and samplers): `pip install vmd_jax`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c launch/constraints.txt -e '.[test,tpu]'
