"""One persistent XLA compilation cache for the test session and every process it
starts (pytest-xdist workers, CLI and multi-process runs), so a program that many
tests compile alike (the tiny models' train steps, samplers, evaluation) is
compiled once. The cache lives in a fresh temporary folder, removed at the end.
"""

import os
import shutil
import tempfile

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the controller's
  _CACHE = tempfile.mkdtemp(prefix="vmd_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
else:
  _CACHE = None


def pytest_unconfigure(config):
  if _CACHE is not None:  # the process that made it
    shutil.rmtree(_CACHE, ignore_errors=True)
