"""The device mesh and how arrays are laid out on it: data parallelism x FSDP.

Mesh: 2-D, axes ``("data", "fsdp")`` with sizes ``config.mesh.data`` x
``config.mesh.fsdp`` (one of them may be -1: the devices left over), built by
``jax.make_mesh`` (which orders devices for the interconnect and keeps each
process's devices together).

- Batches: rows split over every device, ``P(("data", "fsdp"))``: FSDP is data
  parallel too, so each device computes on B / (data * fsdp) rows.
- Parameters, optimizer state and EMA (the whole ``TrainState``): ``fsdp_spec``
  shards each leaf with at least ``config.mesh.fsdp_min_size`` elements along its
  largest axis divisible by the fsdp size (the last such axis on a tie), in the
  style of big_vision's "fsdp" rule (ZeRO-3: XLA gathers a weight where a layer
  needs it and reduce-scatters its gradient); smaller leaves (biases, norms,
  scalars) and leaves with no divisible axis are replicated. The rule looks at
  shapes only, so Adam's moments land where their parameters do.
  ``fsdp = 1`` is plain data parallelism: everything replicated.

Multi-host: ``process_rows`` is the range of a global batch's rows that this
process's devices hold, and ``global_batch`` builds the global array from only
those rows (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH = P(AXES)  # rows over both axes


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) with a -1 resolved to the devices left over; ValueError naming
  ``config.mesh`` when they do not multiply to ``num_devices``."""
  if data == -1 and fsdp == -1 or min(data, fsdp) < -1 or 0 in (data, fsdp):
    raise ValueError(f"config.mesh.data = {data}, config.mesh.fsdp = {fsdp}: each must be "
                     "a positive size, and at most one of them -1 (the rest)")
  if data == -1 and num_devices % fsdp == 0:
    data = num_devices // fsdp
  if fsdp == -1 and num_devices % data == 0:
    fsdp = num_devices // data
  if data * fsdp != num_devices or min(data, fsdp) < 1:
    raise ValueError(f"config.mesh.data x config.mesh.fsdp must be the {num_devices} devices; "
                     f"got {data} x {fsdp}")
  return data, fsdp


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The ("data", "fsdp") mesh of ``config.mesh`` over ``devices`` (default: all)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config.data, mesh_config.fsdp, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def data_parallel_mesh(devices=None) -> Mesh:
  """The mesh of ``config.mesh.data = -1, fsdp = 1`` over ``devices`` (default: all):
  what evaluation and sampling of a loaded run use, whatever mesh trained it."""
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices), 1), AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, BATCH)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """``P`` sharding the largest axis of ``shape`` divisible by ``fsdp_size`` over
  "fsdp" (the last such axis on a tie), or ``P()`` (replicated) when the leaf has
  fewer than ``min_size`` elements, no such axis, or ``fsdp_size`` is 1."""
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return P()
  axes = [i for i, n in enumerate(shape) if n % fsdp_size == 0]
  if not axes:
    return P()
  axis = max(axes, key=lambda i: (shape[i], i))
  return P(*([None] * axis + ["fsdp"]))


def tree_shardings(tree, mesh: Mesh, min_size: int):
  """A ``NamedSharding`` per leaf of ``tree`` (arrays or ShapeDtypeStructs) by ``fsdp_spec``."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)), tree)


def check_batch(batch_size: int, mesh: Mesh, what: str) -> None:
  """ValueError naming ``what`` unless the batch splits evenly over the mesh."""
  if batch_size % mesh.size:
    raise ValueError(f"{what} = {batch_size} is not divisible by the {mesh.size} devices "
                     f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")


def process_rows(sharding: NamedSharding, batch_size: int) -> slice:
  """The rows [lo, hi) of a [batch_size, ...] batch under ``sharding`` that this
  process's devices hold (contiguous: ``jax.make_mesh`` keeps a process's devices
  together along the batch axes)."""
  spans = {s[0].indices(batch_size)[:2]
           for s in sharding.addressable_devices_indices_map((batch_size,)).values()}
  lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
  if sum(b - a for a, b in spans) != hi - lo and len(spans) > 1:
    raise ValueError(f"this process's rows of the batch are not contiguous: {sorted(spans)}")
  return slice(lo, hi)


def global_batch(make_rows: Callable[[slice], dict], batch_size: int,
                 sharding: NamedSharding) -> dict:
  """The global batch {name: jax.Array [batch_size, ...]} from this process's rows
  only: ``make_rows(slice(lo, hi))`` returns rows [lo, hi) of every array."""
  return from_process_rows(make_rows(process_rows(sharding, batch_size)), batch_size, sharding)


def from_process_rows(local: dict, batch_size: int, sharding: NamedSharding) -> dict:
  """{name: jax.Array [batch_size, ...]} from this process's rows ``local`` (the
  ``process_rows`` of each array)."""
  return {k: jax.make_array_from_process_local_data(
              sharding, np.asarray(v), (batch_size,) + np.shape(v)[1:])
          for k, v in local.items()}


def replicate(x, mesh: Mesh) -> jax.Array:
  """A host array (the same on every process) as an array replicated on ``mesh``."""
  return jax.device_put(np.asarray(x), replicated(mesh))


def split_rows(x, mesh) -> jax.Array:
  """A host batch ``x`` [B, ...] (the same on every process) on ``mesh``: rows
  split over the devices, each process giving only its rows, when the device
  count divides B; replicated otherwise."""
  x = np.asarray(x)
  if len(x) % mesh.size:
    return replicate(x, mesh)
  rows = batch_sharding(mesh)
  return from_process_rows({"x": x[process_rows(rows, len(x))]}, len(x), rows)["x"]
