"""Masking schedules alpha(t) for masked diffusion.

A schedule gives the probability alpha(t) that a token is still unmasked at time
t in [0, 1], with alpha(0) ~ 1 and alpha(1) ~ 0 (MD4, Shi et al. 2024, Sec. 2).
Every schedule here is a small frozen dataclass with

  alpha(t)      the keep probability,
  dalpha(t)     its derivative alpha'(t) (closed form, checked against finite
                differences in the tests),
  weight(t)     the continuous-time ELBO weight  -alpha'(t) / (1 - alpha(t)),
  inverse(a)    the time t with alpha(t) = a (used by the first-hitting sampler).

md4 keeps alpha inside [eps, 1 - eps] with the affine shift
  alpha(t) = (1 - 2 eps) a(t) + eps,
where a(t) is the raw schedule below; ``eps=0`` turns the shift off.

Use ``get_schedule(name, **params)``; ``SCHEDULES`` lists the names.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax.numpy as jnp
import numpy as np

MD4_EPS = 1e-4


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Base class: subclasses define the raw a(t), a'(t) and its inverse."""

  eps: float = MD4_EPS

  def __post_init__(self):
    if not 0.0 <= self.eps < 0.5:
      raise ValueError(f"eps must be in [0, 0.5), got {self.eps}")

  # Raw schedule a(t) on [0, 1] with a(0) = 1, a(1) = 0.
  def _a(self, t):
    raise NotImplementedError

  def _da(self, t):
    raise NotImplementedError

  def _a_inverse(self, a):
    raise NotImplementedError

  @property
  def name(self) -> str:
    return _NAME_OF[type(self)]

  def alpha(self, t):
    """alpha(t) = (1 - 2 eps) a(t) + eps."""
    return (1.0 - 2.0 * self.eps) * self._a(t) + self.eps

  def dalpha(self, t):
    """alpha'(t) = (1 - 2 eps) a'(t)."""
    return (1.0 - 2.0 * self.eps) * self._da(t)

  def weight(self, t):
    """Continuous-time NELBO weight  -alpha'(t) / (1 - alpha(t))  (>= 0)."""
    return -self.dalpha(t) / (1.0 - self.alpha(t))

  def inverse(self, alpha):
    """The time t in [0, 1] with alpha(t) = alpha (alpha clipped to the range)."""
    a = (alpha - self.eps) / (1.0 - 2.0 * self.eps)
    return jnp.clip(self._a_inverse(jnp.clip(a, 0.0, 1.0)), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class LinearSchedule(Schedule):
  """a(t) = 1 - t."""

  def _a(self, t):
    return 1.0 - t

  def _da(self, t):
    return -jnp.ones_like(t)

  def _a_inverse(self, a):
    return 1.0 - a


@dataclasses.dataclass(frozen=True)
class CosineSchedule(Schedule):
  """a(t) = 1 - cos(pi/2 (1 - t))."""

  def _a(self, t):
    return 1.0 - jnp.cos(0.5 * jnp.pi * (1.0 - t))

  def _da(self, t):
    return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * (1.0 - t))

  def _a_inverse(self, a):
    return 1.0 - jnp.arccos(1.0 - a) / (0.5 * jnp.pi)


@dataclasses.dataclass(frozen=True)
class PolynomialSchedule(Schedule):
  """a(t) = 1 - t^k  (k = 1 is the linear schedule)."""

  k: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    k = np.asarray(self.k) if not isinstance(self.k, str) else None
    real = (k is not None and k.ndim == 0
            and (np.issubdtype(k.dtype, np.integer) or np.issubdtype(k.dtype, np.floating)))
    if not (real and math.isfinite(float(k)) and float(k) > 0):
      raise ValueError(f"polynomial exponent k must be a finite real number > 0 (not a bool), "
                       f"got {self.k!r}")
    object.__setattr__(self, "k", float(k))

  def _a(self, t):
    return 1.0 - t**self.k

  def _da(self, t):
    return -self.k * t ** (self.k - 1.0)

  def _a_inverse(self, a):
    return (1.0 - a) ** (1.0 / self.k)


@dataclasses.dataclass(frozen=True)
class LogLinearSchedule(Schedule):
  """MDLM's log-linear schedule: sigma(t) = -log(1 - (1 - eps) t), alpha = exp(-sigma).

  So alpha(t) = 1 - (1 - eps) t: alpha(0) = 1 exactly and alpha(1) = eps. The
  md4 shift does not apply; ``eps`` is MDLM's own (default 1e-3).
  """

  eps: float = 1e-3

  def alpha(self, t):
    return 1.0 - (1.0 - self.eps) * t

  def dalpha(self, t):
    return -(1.0 - self.eps) * jnp.ones_like(t)

  def inverse(self, alpha):
    return jnp.clip((1.0 - alpha) / (1.0 - self.eps), 0.0, 1.0)


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "linear": LinearSchedule,
    "cosine": CosineSchedule,
    "polynomial": PolynomialSchedule,
    "loglinear": LogLinearSchedule,
}
_NAME_OF = {cls: name for name, cls in SCHEDULES.items()}


def get_schedule(name: str, **params) -> Schedule:
  """Returns the schedule registered under ``name`` built with ``params``.

  Examples: ``get_schedule("linear")``, ``get_schedule("cosine", eps=0.0)``,
  ``get_schedule("polynomial", k=2.0)``.
  """
  if name not in SCHEDULES:
    raise ValueError(
        f"unknown schedule {name!r}; known schedules: {sorted(SCHEDULES)}")
  cls = SCHEDULES[name]
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(params) - fields)
  if unknown:
    raise ValueError(
        f"schedule {name!r} takes parameters {sorted(fields)}, got unknown {unknown}")
  return cls(**params)


MAX_SAMPLING_STEPS = 2 ** 16


def time_grid(num_steps: int, kind: str = "linear"):
  """Sampling times t_0 = 1 > t_1 > ... > t_T = 0, shape [T + 1], for 1 <= T <=
  ``MAX_SAMPLING_STEPS`` (65536): the samplers' per-step plans are [B, T], and a
  sequence of L tokens is revealed in at most L steps, so more steps only cost
  memory (T = 10^9 would need gigabytes before the first network call).

  linear:  t_i = 1 - i / T  (md4's default grid);
  cosine:  t_i = cos(pi/2 * i / T)  (small steps near t = 1, large near t = 0).
  """
  if not 1 <= num_steps <= MAX_SAMPLING_STEPS:
    raise ValueError(f"num_steps must be in [1, {MAX_SAMPLING_STEPS}] "
                     f"(schedules.MAX_SAMPLING_STEPS), got {num_steps}")
  i = jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
  if kind == "linear":
    return 1.0 - i
  if kind == "cosine":
    return jnp.cos(0.5 * math.pi * i).at[-1].set(0.0)
  raise ValueError(f"unknown time grid {kind!r}; known: ['cosine', 'linear']")
