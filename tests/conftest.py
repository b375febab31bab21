"""Test-session settings shared by every process the tests start (pytest-xdist
workers, CLI and multi-process runs inherit them through the environment):

- one persistent XLA compilation cache, so a program that many tests compile
  alike (the tiny models' train steps, samplers, evaluation) is compiled once; it
  lives in a fresh temporary folder, removed at the end;
- ``TEST_XLA_FLAGS``: XLA's CPU backend without its expensive optimisation passes.
  The tests' models are tiny, so compiling is most of their time and the
  optimisations never pay for themselves (a tiny block-VMD run: 59 s -> 42 s).
  Where this jaxlib has them (0.10; 0.11 dropped the flag, and XLA aborts on a flag
  it does not know), ``OPTIONAL_XLA_FLAGS`` also turn off the MLIR fusion emitters,
  which take twice as long to compile a small program (the suite on 2 cores:
  873 s -> 572 s). The flags change how a program is compiled, not what it
  computes; a test that sets its own ``XLA_FLAGS`` (simulated devices) appends to
  these;
- test files run heaviest first (``HEAVY_FILES``), so that with ``--dist loadfile``
  no long file starts last while the other worker idles.
"""

import os
import shutil
import subprocess
import sys
import tempfile

TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
OPTIONAL_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false",)

# The slowest files first (their tests' seconds in the suite on 2 cores, slowest first).
HEAVY_FILES = ("test_multihost.py", "test_faults.py", "test_prime_train.py",
               "test_benchmarks.py", "test_train.py", "test_sharding.py",
               "test_block_model.py", "test_real_data.py", "test_cli.py",
               "test_genmd4_train.py", "test_block.py", "test_readme.py",
               "test_read_fallback.py", "test_models.py", "test_sampling.py")


def _xla_knows(flag):
  """Whether this jaxlib's XLA starts with ``flag`` (about 2 s: a JAX import)."""
  env = dict(os.environ, XLA_FLAGS=flag, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env,
                        capture_output=True).returncode == 0


# The tests run on the CPU: with libtpu installed (the tpu extra, for tests/test_compile.py,
# which compiles for TPU topologies without a TPU) JAX would otherwise probe for a TPU at
# start and print libtpu's warnings on the stderr that the CLI tests read.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # xdist workers inherit the controller's
  _CACHE = tempfile.mkdtemp(prefix="vmd_jax_tests_xla_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  _FLAGS = " ".join([TEST_XLA_FLAGS, *filter(_xla_knows, OPTIONAL_XLA_FLAGS)])
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAGS}".strip()
else:
  _CACHE = None


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def pytest_unconfigure(config):
  if _CACHE is not None:  # the process that made it
    shutil.rmtree(_CACHE, ignore_errors=True)
