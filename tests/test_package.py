"""The package as a user installs it: a core without Flax or TensorFlow, extras,
one version, configs that resolve from the installed package."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import vmd_jax

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter where importing any of these fails, as in an
# environment with only the core dependencies (jax, chex, numpy) installed.
CORE_ONLY = r"""
import importlib.abc, sys
BLOCKED = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "ml_collections",
           "clu", "matplotlib", "etils")
class Block(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ModuleNotFoundError(f"No module named {name!r} (blocked: core-only test)")
sys.meta_path.insert(0, Block())

import math
import jax, jax.numpy as jnp
from vmd_jax import block, exact, forward, losses, md4, prior, sampling, schedules

V, N = 5, 6
zero = lambda x, t: jnp.zeros(x.shape + (V,))
x0 = jnp.arange(12).reshape(2, N) % V
lin = schedules.get_schedule("linear", eps=0.0)
masked = jnp.full((2, N), 0.999)  # every token masked at t = 0.5: weight 1 / t = 2
nelbo = md4.nelbo(zero, x0, None, lin, t=jnp.full(2, 0.5), noise=masked)
assert abs(float(nelbo[0]) - 2 * N * math.log(V)) < 1e-4, nelbo
x = sampling.sample(zero, jax.random.key(1), jnp.full((2, N), V), 4, schedules.get_schedule("cosine"))
assert x.shape == (2, N) and int(x.max()) < V
bden = lambda x, t, p, m, kv=None, *, z=None: jnp.zeros(x.shape + (V,))
b = block.block_nelbo(bden, x0, None, lin, 2, t=jnp.full((2, 3), 0.5), noise=masked)
assert abs(float(b[0]) - 2 * N * math.log(V)) < 1e-4, b
xs = block.block_sample(bden, None, jax.random.key(3), jnp.full((2, N), V), 2, 2,
                        schedules.get_schedule("linear"), use_cache=False)
assert xs.shape == (2, N) and int(xs.max()) < V
assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
print("core OK")
"""


def test_core_runs_without_flax_or_tensorflow():
  out = subprocess.run([sys.executable, "-c", CORE_ONLY], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
  assert out.returncode == 0 and "core OK" in out.stdout, out.stderr[-3000:]


def test_trainer_imports_no_tensorflow():
  """TensorFlow (about 0.5 GB resident) loads only where a run builds text8, not
  when a program imports the train step, ``load`` or the CLI (summaries:
  tests/test_summaries.py)."""
  code = ("import sys\n"
          "from vmd_jax.trainer import cli, evaluate, load, train\n"
          "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
  assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr[-3000:])


def test_core_dependencies_and_extras():
  project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
  core = sorted(d.split(">")[0].split("=")[0].split("[")[0] for d in project["dependencies"])
  assert core == ["chex", "jax", "numpy"]
  assert all("==" not in d for d in project["dependencies"])  # lower bounds, not pins
  extras = project["optional-dependencies"]
  assert {"models", "train", "text8", "test"} <= set(extras)
  assert any(d.startswith("flax") for d in extras["models"])
  assert any(d.startswith("tensorflow-datasets") for d in extras["text8"])
  # TensorFlow only where a TensorFlow dataset needs it: [train] installs where it has
  # no wheel (macOS arm64, aarch64 Linux).
  assert not [d for d in extras["train"] if d.startswith(("tensorflow", "clu", "tensorboard>"))]
  assert any(d.startswith("tensorflow-cpu") for d in extras["text8"])
  assert project["scripts"]["vmd-jax"] == "vmd_jax.__main__:main"  # core-only: one line
  assert "version" in project["dynamic"]  # one source: vmd_jax.__version__
  assert (REPO / "LICENSE").is_file() and (REPO / "vmd_jax" / "py.typed").is_file()
  pins = (REPO / "launch" / "constraints.txt").read_text()
  assert "jax==" in pins and "flax==" in pins


def test_version_has_one_source():
  """The installed metadata, the constraints file and the CHANGELOG's newest
  release all name vmd_jax.__version__."""
  from importlib.metadata import version
  assert version("vmd_jax") == vmd_jax.__version__
  pins = (REPO / "launch" / "constraints.txt").read_text()
  assert re.findall(r"vmd_jax\D*?(\d+\.\d+\.\d+)", pins) == [vmd_jax.__version__]
  releases = re.findall(r"^## (\d+\.\d+\.\d+)", (REPO / "CHANGELOG.md").read_text(), re.M)
  assert releases[0] == vmd_jax.__version__


def test_configs_are_packaged_and_resolve_by_name():
  from vmd_jax.trainer import cli
  packaged = Path(vmd_jax.__file__).parent / "configs"
  assert (packaged / "text8_vmd.py").is_file() and (packaged / "__init__.py").is_file()
  assert cli.resolve_config_path("text8_vmd") == str(packaged / "text8_vmd.py")
  assert cli.resolve_config_path("configs/text8_vmd.py") == "configs/text8_vmd.py"
  assert cli.resolve_config_path("/nowhere/text8_vmd.py") == str(packaged / "text8_vmd.py")


def test_core_imports_no_flax_and_networks_no_trainer():
  """Dependencies flow one way: core <- networks <- data <- trainer."""
  import ast
  rules = {"": ("vmd_jax.networks", "vmd_jax.trainer", "vmd_jax.data", "flax"),
           "networks": ("vmd_jax.trainer", "vmd_jax.data"),
           "data": ("vmd_jax.trainer", "vmd_jax.networks")}
  core = ["schedules", "forward", "losses", "sampling", "block", "exact", "prior"]
  files = {"": [REPO / "vmd_jax" / f"{m}.py" for m in core],
           "networks": list((REPO / "vmd_jax" / "networks").glob("*.py")),
           "data": list((REPO / "vmd_jax" / "data").glob("*.py"))}
  for layer, paths in files.items():
    for path in paths:
      for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
          assert not name.startswith(rules[layer]), f"{path.name} imports {name}"
