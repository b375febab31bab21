"""``vmd-jax compile`` on a small TPU topology (v5e:2x2, 4 chips) with a tiny config:
the compiled step's layout read back against the FSDP rule, per-chip bytes, the
batch split, the refusals. Needs libtpu (``vmd_jax[tpu]``, installed by
launch/setup.sh); skipped where it is not installed."""

import importlib.util
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from vmd_jax.trainer import compile as compile_lib, config as config_lib, sharding

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (pip install 'vmd_jax[tpu]')")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHIPS, FSDP, MIN_SIZE = 4, 2, 1024


def tiny_text8(fsdp=FSDP):
  """text8_vmd shrunk (its text8 shape needs no data: V = 27, N = data.seq_len)."""
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "text8_vmd.py"))
  c.data.seq_len = 32
  c.model.width, c.model.depth, c.model.num_heads = 64, 1, 2
  c.model.encoder_width, c.model.encoder_depth, c.model.encoder_heads = 32, 1, 2
  c.train.batch_size = 16
  c.mesh.data, c.mesh.fsdp, c.mesh.fsdp_min_size = -1, fsdp, MIN_SIZE
  return c


@pytest.fixture(scope="module")
def compiled():
  devices = compile_lib.topology_devices("v5e:2x2")
  row, step = compile_lib.compile_train_step(config_lib.validate(tiny_text8()), devices)
  return row, step


def leaves(tree):
  return jax.tree_util.tree_leaves_with_path(tree)


def test_state_is_sharded_as_the_fsdp_rule_says(compiled):
  """Every leaf of the parameters, Adam's moments and the EMA that ``fsdp_spec``
  shards has the rule's sharding in the compiled step (input and output, the
  output donated into the input); the others are replicated."""
  row, step = compiled
  (state_in, x0, ok), _ = step.input_shardings
  state_out = step.output_shardings[0]
  adam = state_in.opt_state[1][0]  # chain(clip, adamw): adamw's ScaleByAdamState
  trees = {"params": (state_in.params, state_out.params), "ema": (state_in.ema_params,
                                                                 state_out.ema_params),
           "mu": (adam.mu, state_out.opt_state[1][0].mu),
           "nu": (adam.nu, state_out.opt_state[1][0].nu)}
  abstract, _ = _abstract_state()
  shapes = abstract.params
  sharded = 0
  for name, (inputs, outputs) in trees.items():
    for (path, s_in), (_, s_out), (_, shape) in zip(leaves(inputs), leaves(outputs),
                                                    leaves(shapes)):
      rule = sharding.fsdp_spec(shape.shape, FSDP, MIN_SIZE)
      for s in (s_in, s_out):
        assert s.spec == rule, (name, jax.tree_util.keystr(path), s.spec, rule)
        assert s.is_fully_replicated == (rule == jax.sharding.PartitionSpec()), path
      sharded += rule != jax.sharding.PartitionSpec()
  assert sharded >= 4 * 4  # several matrices in each of the four trees


def _abstract_state():
  from vmd_jax.trainer import build, train
  from vmd_jax.trainer.state import make_optimizer
  c = tiny_text8()
  mesh = sharding.make_mesh(c.mesh, compile_lib.topology_devices("v5e:2x2"))
  model = build.build_model(c, 27, c.data.seq_len)
  return train.abstract_state(model, make_optimizer(c.train), c.seed, c.data.seq_len, mesh,
                              MIN_SIZE)


def test_per_chip_parameter_bytes_fall_by_the_fsdp_size(compiled):
  """Per chip, by the compiled step's shardings, the sharded leaves hold exactly
  1 / fsdp of their bytes (over 90% of the state's); XLA's argument bytes hold at
  least that state and the batch's rows (more: TPU layouts pad small arrays' two
  minor dimensions to tiles of 8 x 128)."""
  row, step = compiled
  state_in = step.input_shardings[0][0]
  abstract, _ = _abstract_state()
  total = per_chip = sharded_total = sharded_per_chip = 0
  for (_, shape), (_, s) in zip(leaves(abstract), leaves(state_in)):
    nbytes = math.prod(shape.shape) * shape.dtype.itemsize
    local = math.prod(s.shard_shape(shape.shape)) * shape.dtype.itemsize
    total, per_chip = total + nbytes, per_chip + local
    if not s.is_fully_replicated:
      sharded_total, sharded_per_chip = sharded_total + nbytes, sharded_per_chip + local
  assert sharded_per_chip * FSDP == sharded_total and sharded_total > 0.9 * total
  batch_bytes = 16 // CHIPS * 32 * 4
  assert per_chip + batch_bytes <= row.argument_bytes
  assert row.parameters == sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))


def test_batch_rows_are_split_over_every_chip(compiled):
  row, step = compiled
  x0 = step.input_shardings[0][1]
  assert x0.shard_shape((16, 32)) == (16 // CHIPS, 32)
  assert len({idx[0].start for idx in x0.devices_indices_map((16, 32)).values()}) == CHIPS
  assert row.chips == CHIPS and row.mesh == {"data": CHIPS // FSDP, "fsdp": FSDP}
  assert row.device_kind == "TPU v5 lite" and row.hbm_bytes == 16 * 2**30
  assert row.flops > 0 and 0 < row.estimated_seconds < 1 and 0 < row.mfu < 1


def test_slice_names():
  assert compile_lib.topology_name("v5p-64") == "v5p:2x4x4"
  assert compile_lib.topology_name("v4-8") == "v4:2x2x1"
  assert compile_lib.topology_name("v5e-16") == "v5e:4x4"
  assert compile_lib.topology_name("v5litepod-4") == "v5e:2x2"
  assert compile_lib.topology_name("v5e:4x4") == "v5e:4x4"
  with pytest.raises(compile_lib.BadTopology, match="accepted sizes"):
    compile_lib.topology_name("v5p-12")
  assert len(compile_lib.topology_devices("v4-8")) == 4  # one device per chip (megacore)


def test_missing_libtpu_says_what_to_install(monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *args: None if name == "libtpu" else real(name, *args))
  with pytest.raises(compile_lib.BadTopology) as e:
    compile_lib.topology_devices("v5e:2x2")
  assert str(e.value) == ("compiling for a TPU topology needs libtpu, which is not installed: "
                          "pip install 'vmd_jax[tpu]'")


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "vmd_jax", "compile", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_unknown_topology_is_one_line_exit_2():
  out = run_cli("--config=text8_md4", "--topology=v9x:2x2")
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("vmd-jax compile: error: --topology=v9x:2x2: ") and \
      "accepted: KIND:AxB" in last, out.stderr[-2000:]


def test_a_step_that_does_not_fit_is_refused_in_one_line():
  """text8_md4's network at width 1024, 4 layers and batch 4096, data parallel on
  4 v5e chips: XLA's TPU compiler runs out of HBM (48 GiB of temporaries against
  15.75) and the command refuses it, naming what would help (exit 2)."""
  out = run_cli("--config=text8_md4", "--topology=v5e:2x2", "--nosampler",
                "--config.model.width=1024", "--config.model.depth=4",
                "--config.model.num_heads=8", "--config.train.batch_size=4096")
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("vmd-jax compile: error: the train step does not fit: XLA's TPU "
                         "compiler says: Ran out of memory"), out.stderr[-2000:]
  assert last.endswith("(a TPU v5 lite chip); try sharding the state over more chips "
                       "(--config.mesh.data=1 --config.mesh.fsdp=4; now fsdp 1), recomputing "
                       "activations in the backward pass (--config.model.remat=True) or a "
                       "smaller --config.train.batch_size (now 4096)"), last


def test_check_fits_counts_donated_outputs_once():
  """Peak = arguments + temporaries + outputs - aliases + code, against the chip's HBM."""
  c = tiny_text8()
  row = compile_lib.Row(function="train step", chips=4, device_kind="TPU v5 lite",
                        mesh={"data": 2, "fsdp": 2}, parameters=1, argument_bytes=6 * 2**30,
                        temp_bytes=8 * 2**30, output_bytes=6 * 2**30, alias_bytes=6 * 2**30,
                        code_bytes=2**20, hbm_bytes=16 * 2**30, flops=1.0,
                        estimated_seconds=1.0, compile_seconds=1.0, dtype="float32")
  compile_lib.check_fits(row, c)  # 14 GiB + 1 MiB of 16
  row.temp_bytes = 10 * 2**30
  with pytest.raises(compile_lib.DoesNotFit, match=r"needs 16\.0 GiB per chip, a TPU v5 lite "
                     r"chip has 16 GiB; try sharding the state over more chips "
                     r"\(--config.mesh.data=1 --config.mesh.fsdp=4; now fsdp 2\)"):
    compile_lib.check_fits(row, c)
