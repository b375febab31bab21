"""``vmd-jax compile``: a config's train step and sampler compiled ahead of time
for a TPU topology, on any machine (a CPU host will do), to know before paying
for a pod whether the run fits.

libtpu (``pip install 'vmd_jax[tpu]'``) holds XLA's TPU compiler and describes
any TPU slice without one: ``topology_devices("v5p:2x4x4")`` are its 32 chips as
compile-only devices. On them ``compile_train_step`` builds what ``vmd-jax
train`` runs (``train.abstract_state`` and ``train.jit_train_step``: the same
validated config, ("data", "fsdp") mesh, FSDP layout, guarded step and donated
state, at the config's batch) and compiles it; ``compile_sampler`` compiles the
sampler of the config's first ``eval.settings`` (MD4's, or the KV-cached block
sampler with ``diffusion.block_size``) as evaluation runs it, parameters
replicated and rows split over the chips. Each gives a row (``Row``) of per-chip
bytes (XLA's ``memory_analysis``), FLOPs and the compiler's estimated seconds
per call (``cost_analysis``: ``optimal_seconds``), estimates, not measurements.

A step is refused (``DoesNotFit``: one line, exit 2 on the command line) when
its per-chip bytes, arguments + temporaries + outputs - donated aliases +
code, exceed the chip's HBM (``mfu.HBM_BYTES``), or when XLA's TPU compiler
itself runs out of HBM.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import numpy as np

from vmd_jax import data as data_registry
from vmd_jax.trainer import build, config as config_lib, evaluate, mfu, sharding, train
from vmd_jax.trainer.state import make_optimizer

GiB = mfu.GiB
# Slice names count TensorCores on v4 and v5p (two per chip), chips on v5e and v6e.
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
ALIASES = {"v5litepod": "v5e", "v6": "v6e"}
SLICE_SHAPES = {  # chips -> the slice's shape (Cloud TPU's documented slices)
    3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
        256: "4x8x8", 512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16"},
    2: {4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
        256: "16x16"},
}
TOPOLOGY_FORMS = ("KIND:AxB (v5e, v6e) or KIND:AxBxC (v4, v5p), e.g. v5p:2x4x4, v5e:4x4; "
                  "or a slice name KIND-N, e.g. v4-8, v5e-16, v5p-64; KIND one of "
                  f"{sorted(CORES_PER_CHIP)}")


class BadTopology(ValueError):
  """A topology name libtpu does not know, or no libtpu (one line, exit 2)."""


class DoesNotFit(ValueError):
  """The compiled step needs more memory per chip than the chip has (exit 2)."""


def topology_name(name: str) -> str:
  """The libtpu topology of ``name``: "v5p-64" -> "v5p:2x4x4" (32 chips: v4 and v5p
  slice names count two TensorCores per chip), "v5e-16" -> "v5e:4x4"; a
  "KIND:AxB[xC]" name is returned as it is."""
  match = re.fullmatch(r"(v\w+?)-(\d+)", name.strip())
  if not match:
    return name.strip()
  kind = ALIASES.get(match[1], match[1])
  if kind not in CORES_PER_CHIP:
    raise BadTopology(f"--topology={name}: unknown TPU kind {match[1]!r}; accepted: "
                      f"{TOPOLOGY_FORMS}")
  chips, rest = divmod(int(match[2]), CORES_PER_CHIP[kind])
  shapes = SLICE_SHAPES[3 if CORES_PER_CHIP[kind] == 2 else 2]
  if rest or chips not in shapes:
    raise BadTopology(f"--topology={name}: no {kind} slice of {match[2]} "
                      f"{'cores' if CORES_PER_CHIP[kind] == 2 else 'chips'}; accepted sizes: "
                      f"{[n * CORES_PER_CHIP[kind] for n in shapes]}")
  return f"{kind}:{shapes[chips]}"


def topology_devices(name: str) -> list:
  """The compile-only devices (one per chip) of TPU topology ``name``
  (``topology_name``'s forms); ``BadTopology`` without libtpu or for a name it
  does not know."""
  if importlib.util.find_spec("libtpu") is None:
    raise BadTopology("compiling for a TPU topology needs libtpu, which is not installed: "
                      "pip install 'vmd_jax[tpu]'")
  _describe_host_without_tpu()
  from jax.experimental import topologies
  resolved = topology_name(name)
  kind = ALIASES.get(resolved.split(":")[0], resolved.split(":")[0])
  chip = {"chip_config_name": "megacore"} if CORES_PER_CHIP.get(kind) == 2 else {}
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=resolved,
                                              **chip).devices)
  except Exception as e:  # libtpu's own message says what is wrong with the name
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise BadTopology(f"--topology={name}: {reason}; accepted: {TOPOLOGY_FORMS}") from None


def _describe_host_without_tpu() -> None:
  """On a host with no TPU attached, lets libtpu load in several processes at once
  (its lockfile guards a TPU, and there is none: compiles may run side by side), and
  tells it (unless already told) that this is one host of a TPU slice, which it
  otherwise reports on stderr at length while it loads. Effective before anything
  loads libtpu; the topology compiled for is ``topology_devices``' argument either way."""
  from jax._src import hardware_utils
  if hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0:
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def data_shape(config) -> tuple[int, int]:
  """(V, N) of ``config.data`` without reading the data where the config fixes
  it (the dataset's ``config_shape``: text8's 27 characters and ``data.seq_len``);
  other datasets are built."""
  config_shape = data_registry.hook(config.data.name, "config_shape")
  if config_shape is not None:
    return config_shape(config.data)
  dataset = build.build_dataset(config)
  return dataset.vocab_size, dataset.seq_len


@dataclasses.dataclass
class Row:
  """One compiled function on one topology; bytes and FLOPs per chip; the
  seconds are XLA's estimate (``cost_analysis``'s ``optimal_seconds``)."""
  function: str
  chips: int
  device_kind: str
  mesh: dict
  parameters: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  code_bytes: int
  hbm_bytes: int | None
  flops: float | None
  estimated_seconds: float | None
  compile_seconds: float
  dtype: str

  @property
  def peak_bytes(self) -> int:
    """Per-chip bytes live at once: arguments + temporaries + outputs, less the
    outputs written into donated arguments, plus the program."""
    return (self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes
            + self.code_bytes)

  @property
  def mfu(self) -> float | None:
    """FLOPs / (estimated seconds x the chip's peak bf16 FLOP/s)."""
    peak = mfu.peak_flops_per_device(self.device_kind)
    if not (peak and self.flops and self.estimated_seconds):
      return None
    return self.flops / self.estimated_seconds / peak

  def to_dict(self) -> dict:
    return dataclasses.asdict(self) | {"peak_bytes": self.peak_bytes, "mfu": self.mfu}


def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def compiled_row(compiled, function: str, mesh, parameters: int, seconds: float,
                 dtype: str, flops: float | None = None) -> Row:
  """``compiled``'s per-chip memory and cost as a ``Row``; ``flops``: a count to
  report instead of XLA's (model FLOPs under remat)."""
  memory, cost = compiled.memory_analysis(), _cost(compiled)
  kind = mesh.devices.flat[0].device_kind
  return Row(function=function, chips=mesh.size, device_kind=kind,
             mesh=dict(mesh.shape),
             parameters=parameters, argument_bytes=memory.argument_size_in_bytes,
             temp_bytes=memory.temp_size_in_bytes, output_bytes=memory.output_size_in_bytes,
             alias_bytes=memory.alias_size_in_bytes,
             code_bytes=memory.generated_code_size_in_bytes,
             hbm_bytes=mfu.hbm_bytes_per_device(kind),
             flops=flops or mfu.compiled_flops(compiled),
             estimated_seconds=cost.get("optimal_seconds"), compile_seconds=seconds,
             dtype=dtype)


def _compiling(function: str, config, mesh, lower):
  """``lower().compile()`` and its seconds; XLA running out of HBM is ``DoesNotFit``."""
  start = time.time()
  try:
    compiled = lower().compile()
  except Exception as e:  # XLA's TPU compiler: "RESOURCE_EXHAUSTED: ... hbm"
    if "RESOURCE_EXHAUSTED" not in str(e) and "Ran out of memory" not in str(e):
      raise
    said = str(e).splitlines()[0].replace("RESOURCE_EXHAUSTED: ", "").rstrip(".")
    raise DoesNotFit(f"the {function} does not fit: XLA's TPU compiler says: {said} (a "
                     f"{mesh.devices.flat[0].device_kind} chip); "
                     f"{_remedies(function, config, mesh.shape['fsdp'], mesh.size)}") from None
  return compiled, time.time() - start


def _remedies(function: str, config, fsdp: int, chips: int) -> str:
  """What would lower the per-chip bytes of ``function`` ("train step" or a
  sampler) of ``config`` on ``chips`` chips with an fsdp axis of ``fsdp``."""
  if function.startswith("sampler"):
    return f"try a smaller --config.eval.batch_size (now {config.eval.batch_size})"
  helps = []
  if fsdp < chips:
    helps.append(f"sharding the state over more chips (--config.mesh.data=1 "
                 f"--config.mesh.fsdp={chips}; now fsdp {fsdp})")
  if not config.model.remat:
    helps.append("recomputing activations in the backward pass (--config.model.remat=True)")
  helps.append(f"a smaller --config.train.batch_size (now {config.train.batch_size})")
  return "try " + (", ".join(helps[:-1]) + " or " if len(helps) > 1 else "") + helps[-1]


def compile_train_step(config, devices) -> tuple[Row, object]:
  """The train step ``vmd-jax train`` runs for ``config`` on ``devices``, compiled;
  (its ``Row``, the compiled step). FLOPs: the model's (``train.model_flops_per_device``)
  with cuDNN attention or remat, else XLA's count of the step."""
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch(config.train.batch_size, mesh, "config.train.batch_size")
  vocab_size, seq_len = data_shape(config)
  model = build.build_model(config, vocab_size, seq_len)
  tx = make_optimizer(config.train)
  state, shardings = train.abstract_state(model, tx, config.seed, seq_len, mesh,
                                          config.mesh.fsdp_min_size)
  step = train.jit_train_step(model, tx, config, shardings, mesh)
  compiled, seconds = _compiling("train step", config, mesh, lambda: step.lower(
      state, *train.step_inputs(config, seq_len, mesh)))
  flops = None
  if config.model.attention == "cudnn" or config.model.remat:
    unsharded = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    flops = train.model_flops_per_device(config, vocab_size, seq_len, tx, unsharded,
                                         num_devices=mesh.size)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  return compiled_row(compiled, "train step", mesh, n_params, seconds, config.model.dtype,
                      flops), compiled


def compile_sampler(config, devices) -> tuple[Row, object]:
  """The sampler of ``config.eval.settings``' first ORDER:NFE as evaluation runs it
  (``evaluate.jit_sampler``: parameters replicated, ``eval.batch_size`` rows split
  over every chip), compiled; (its ``Row``, the compiled sampler). A row is one
  call, all NFE network calls of a batch: its bytes are the call's, its FLOPs and
  estimated seconds a lower bound (XLA's cost model counts a loop's body once)."""
  mesh = sharding.data_parallel_mesh(devices)
  vocab_size, seq_len = data_shape(config)
  model = build.build_model(config, vocab_size, seq_len)
  order, nfe = config_lib.parse_eval_settings(config.eval.settings)[0]
  rep = sharding.replicated(mesh)
  key = jax.ShapeDtypeStruct((), jax.eval_shape(jax.random.key, 0).dtype, sharding=rep)
  params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
                        jax.eval_shape(model.init, jax.random.key(config.seed),
                                       np.zeros((1, seq_len), np.int32)))
  rows = config.eval.batch_size
  x_init = jax.ShapeDtypeStruct((rows, seq_len), np.int32, sharding=(
      sharding.batch_sharding(mesh) if rows % mesh.size == 0 else rep))
  draw = evaluate.jit_sampler(model, config, mesh)
  name = f"sampler {order}:{nfe}" + (" (KV cache)" if model.block_size else "")
  compiled, seconds = _compiling(name, config, mesh,
                                 lambda: draw.lower(params, key, x_init, nfe, order))
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  return compiled_row(compiled, name, mesh, n_params, seconds, config.model.dtype), compiled


def check_fits(row: Row, config) -> None:
  """``DoesNotFit`` naming the bytes needed and what would help, when the row's
  per-chip peak exceeds the chip's HBM; nothing for an unlisted chip."""
  if row.hbm_bytes is None or row.peak_bytes <= row.hbm_bytes:
    return
  helps = _remedies(row.function, config, row.mesh.get("fsdp", 1), row.chips)
  raise DoesNotFit(f"the {row.function} does not fit: it needs {row.peak_bytes / GiB:.1f} "
                   f"GiB per chip, a {row.device_kind} chip has {row.hbm_bytes / GiB:.0f} GiB; "
                   f"{helps}")


def _gib(n) -> str:
  return "-" if n is None else f"{n / GiB:.2f}"


def format_table(rows: list[Row]) -> str:
  """The rows as a fixed-width text table (bytes in GiB per chip)."""
  head = ("function", "chips", "mesh", "params", "dtype", "args GiB", "temp GiB", "out GiB",
          "peak/HBM GiB", "TFLOP/chip", "est. s", "est. MFU", "compile s")
  lines = [head]
  for r in rows:
    lines.append((
        r.function, str(r.chips), " x ".join(f"{a} {n}" for a, n in r.mesh.items()), f"{r.parameters / 1e6:.1f}M", r.dtype,
        _gib(r.argument_bytes), _gib(r.temp_bytes), _gib(r.output_bytes),
        f"{_gib(r.peak_bytes)}/{_gib(r.hbm_bytes)}",
        "-" if r.flops is None else f"{r.flops / 1e12:.3g}",
        "-" if r.estimated_seconds is None else f"{r.estimated_seconds:.4g}",
        "-" if r.mfu is None else f"{r.mfu:.1%}", f"{r.compile_seconds:.0f}"))
  widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                   for line in lines)


def compile_config(config, topology: str, sampler: bool = True) -> list[Row]:
  """The rows of ``config``'s train step (and sampler) compiled for ``topology``,
  after the checks ``vmd-jax train`` makes; ``DoesNotFit`` is raised after all
  rows are compiled, by ``check_fits``."""
  config_lib.validate(config)
  if "runs" in config:
    raise ValueError("vmd-jax compile takes one run's config, not a sweep (config.runs): "
                     "compile each run's config file")
  config_lib.check_platform(config, "tpu")
  devices = topology_devices(topology)
  rows = [compile_train_step(config, devices)[0]]
  if sampler:
    rows.append(compile_sampler(config, devices)[0])
  return rows
