"""What the benchmark scripts share: the config they time, compile-then-time, FLOPs.

No flags here: each script defines its own and passes the values in.
"""

from __future__ import annotations

import ast
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from vmd_jax.networks import Denoiser
from vmd_jax.trainer import config as config_lib


def load_config(path: str, overrides=(), **fields):
  """The config at ``path`` with ``fields`` ("group.name": value) and then
  ``overrides`` ("group.name=VALUE", VALUE parsed as a Python literal, else kept
  as a string) set, validated."""
  c = config_lib.load_config_file(path)
  items = list(fields.items())
  for item in overrides:
    field, _, text = item.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    items.append((field, value))
  for field, value in items:
    group, _, name = field.rpartition(".")
    c[group][name] = value
  return config_lib.validate(c)


def seconds(fn, *args) -> float:
  """Wall seconds of one call of ``fn(*args)``, until its outputs are ready."""
  start = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - start


def compile_and_time(fn, *args, repeats: int, warmup: int = 0):
  """(compile seconds, median seconds of ``repeats`` runs, last output) of ``jit(fn)``,
  after ``warmup`` untimed runs (a GPU's first run also loads its kernels)."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_seconds = time.perf_counter() - start
  for _ in range(warmup):
    jax.block_until_ready(compiled(*args))
  times, out = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_seconds, statistics.median(times), out


def interleaved_medians(sides: dict, rounds: int) -> dict:
  """{name: median seconds} of ``rounds`` calls of each compiled ``fn(*args)`` in
  ``sides`` ({name: (fn, *args)}), taken in turns so that load hits every side
  alike; each median is printed as it is known."""
  times = {name: [] for name in sides}
  for _ in range(rounds):
    for name, (fn, *args) in sides.items():
      times[name].append(seconds(fn, *args))
  medians = {name: statistics.median(t) for name, t in times.items()}
  for name, median in medians.items():
    print(f"{name}: median {median:.3f} s of {rounds}")
  return medians


def flops_of(compiled) -> float:
  """XLA's FLOP count of one call of a compiled function (NaN if it has none).

  A loop's body is counted once, whatever its trip count."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def init_params(model: Denoiser, length: int):
  """Random parameters (not the zero head's constant logits), drawn with numpy on
  the traced shapes: the weights do not change the cost, only the sampled text."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, length), jnp.int32),
                          jnp.zeros((1,)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(0.05 * rng.normal(size=s.shape), s.dtype), shapes)


def machine() -> dict:
  """The device timed and the host around it, for the results' header."""
  device = jax.devices()[0]
  return {"device": f"{device.platform}: {device.device_kind}",
          "device_count": jax.device_count(),
          "cpu": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(),
          "load_average": os.getloadavg(),
          "jax": jax.__version__}
