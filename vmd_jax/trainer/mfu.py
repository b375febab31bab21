"""Model FLOPs utilisation (MFU) of the train step.

  MFU = model FLOPs per step per device x steps per second / peak FLOP/s per device.

The step's FLOPs are XLA's count for the compiled (partitioned, so per-device)
train step, ``compiled.cost_analysis()["flops"]``: forward, backward and
optimizer. With cuDNN attention or remat the trainer counts instead the same
step built with XLA's attention and no remat (``train.model_flops_per_device``):
XLA does not count inside cuDNN's kernel, and recomputed work is not model work.
Peaks are the vendors' dense bf16 figures; ``config.train.peak_flops_per_device``
(> 0) overrides the table, e.g. for fp32 or an unlisted chip. On a device with no
known peak (a CPU) only the FLOPs and the achieved FLOP/s are logged. ``HBM_BYTES``
is each chip's memory, for ``vmd-jax compile``'s check that a step fits."""

from __future__ import annotations

from absl import logging

# Dense bf16 FLOP/s per device (one chip; a TPU v4/v5p chip is one JAX device),
# matched against jax.Device.device_kind, most specific first.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),          # H100 SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989e12),
    ("TPU v5 lite", 197e12),   # v5e
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),        # v5p reports "TPU v5"
    ("TPU v4", 275e12),
    ("TPU v6 lite", 918e12),   # v6e (Trillium)
)

GiB = 2**30
# High-bandwidth memory per device (bytes), matched like ``PEAK_FLOPS``: what
# ``vmd-jax compile`` checks a step's per-device bytes against.
HBM_BYTES = (
    ("H100 PCIe", 80 * GiB),
    ("H100 NVL", 94 * GiB),
    ("H100", 80 * GiB),
    ("H200", 141 * GiB),
    ("TPU v5 lite", 16 * GiB),  # v5e
    ("TPU v5e", 16 * GiB),
    ("TPU v5p", 95 * GiB),
    ("TPU v5", 95 * GiB),       # v5p reports "TPU v5"
    ("TPU v4", 32 * GiB),
    ("TPU v6 lite", 32 * GiB),  # v6e
)


def _lookup(table, device_kind: str) -> float | None:
  for name, value in table:
    if name.lower() in device_kind.lower():
      return value
  return None


def peak_flops_per_device(device_kind: str, override: float = 0.0) -> float | None:
  """``override`` if > 0, else the table's peak for ``device_kind``, else None."""
  if override > 0:
    return float(override)
  return _lookup(PEAK_FLOPS, device_kind)


def hbm_bytes_per_device(device_kind: str) -> int | None:
  """The table's HBM bytes for ``device_kind``, or None (an unlisted chip, a CPU)."""
  return _lookup(HBM_BYTES, device_kind)


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (or lowered) function, per device; None if XLA
  has no count."""
  try:
    cost = compiled.cost_analysis()
  except Exception as e:  # not every backend implements it
    logging.warning("no FLOP count for the train step (%s)", e)
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def utilisation(flops_per_step: float | None, steps_per_sec: float,
                peak: float | None) -> dict:
  """{"flops_per_step", "flops_per_sec" (achieved, per device), "mfu" (if ``peak``)}."""
  if flops_per_step is None:
    return {}
  out = {"flops_per_step": flops_per_step, "flops_per_sec": flops_per_step * steps_per_sec}
  if peak:
    out["mfu"] = out["flops_per_sec"] / peak
  return out
