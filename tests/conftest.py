"""Test-session settings shared by every process the tests start (pytest-xdist
workers, CLI and multi-process runs inherit them through the environment):

- one persistent XLA compilation cache, so a program that many tests compile
  alike (the tiny models' train steps, samplers, evaluation) is compiled once; it
  lives in a fresh temporary folder, removed at the end;
- ``TEST_XLA_FLAGS``: XLA's CPU backend without its expensive optimisation passes.
  The tests' models are tiny, so compiling is most of their time and the
  optimisations never pay for themselves (a tiny block-VMD run: 59 s -> 42 s).
  The passes change how a program is fused, not what it computes; a test that
  sets its own ``XLA_FLAGS`` (simulated devices) appends to these;
- test files run heaviest first (``HEAVY_FILES``), so that with ``--dist loadfile``
  no long file starts last while the other worker idles.
"""

import os
import shutil
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# The slowest files first (serial seconds measured on 2 cores, slowest first).
HEAVY_FILES = ("test_prime_train.py", "test_sharding.py", "test_multihost.py",
               "test_train.py", "test_block_model.py", "test_real_data.py",
               "test_faults.py", "test_cli.py", "test_genmd4_train.py", "test_readme.py",
               "test_benchmarks.py",
               "test_sampling.py", "test_read_fallback.py", "test_prime.py", "test_block.py")

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the controller's
  _CACHE = tempfile.mkdtemp(prefix="vmd_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()
else:
  _CACHE = None


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def pytest_unconfigure(config):
  if _CACHE is not None:  # the process that made it
    shutil.rmtree(_CACHE, ignore_errors=True)
