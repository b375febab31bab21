"""Schedules: closed-form derivatives, inverses, boundary values, the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import schedules
from vmd_jax.schedules import get_schedule

ALL = [("linear", {}), ("cosine", {}), ("polynomial", {"k": 2.0}),
       ("polynomial", {"k": 0.5}), ("loglinear", {}), ("linear", {"eps": 0.0})]


@pytest.mark.parametrize("name,params", ALL)
def test_dalpha_matches_finite_differences(name, params):
  jax.config.update("jax_enable_x64", True)
  try:
    s = get_schedule(name, **params)
    t = jnp.linspace(0.05, 0.95, 19, dtype=jnp.float64)
    h = 1e-6
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    np.testing.assert_allclose(s.dalpha(t), fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(s.dalpha(t), jax.vmap(jax.grad(s.alpha))(t), rtol=1e-10)
  finally:
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name,params", ALL)
def test_alpha_range_monotone_and_inverse(name, params):
  s = get_schedule(name, **params)
  t = jnp.linspace(0.0, 1.0, 101)
  a = s.alpha(t)
  assert np.all(np.diff(np.asarray(a)) < 0), "alpha must decrease"
  eps = s.eps
  if name == "loglinear":
    np.testing.assert_allclose([a[0], a[-1]], [1.0, eps], atol=1e-7)
  else:
    np.testing.assert_allclose([a[0], a[-1]], [1.0 - eps, eps], atol=1e-6)
  np.testing.assert_allclose(s.inverse(s.alpha(t[1:-1])), t[1:-1], atol=2e-4)
  w = s.weight(t[1:-1])
  np.testing.assert_allclose(w, -s.dalpha(t[1:-1]) / (1 - s.alpha(t[1:-1])), rtol=1e-6)
  assert np.all(np.asarray(w) > 0)


def test_md4_shift_and_named_values():
  lin = get_schedule("linear")
  assert lin.eps == schedules.MD4_EPS
  np.testing.assert_allclose(lin.alpha(0.25), (1 - 2e-4) * 0.75 + 1e-4, rtol=1e-6)
  cos = get_schedule("cosine", eps=0.0)
  np.testing.assert_allclose(cos.alpha(0.5), 1 - np.cos(np.pi / 4), rtol=1e-6)
  poly = get_schedule("polynomial", k=3.0, eps=0.0)
  np.testing.assert_allclose(poly.alpha(0.5), 1 - 0.125, rtol=1e-6)
  np.testing.assert_allclose(poly.weight(0.5), 3 * 0.25 / 0.125, rtol=1e-5)


def test_registry_errors_name_the_choices():
  with pytest.raises(ValueError, match=r"unknown schedule 'quadratic'.*cosine.*linear"):
    get_schedule("quadratic")
  with pytest.raises(ValueError, match=r"unknown \['kk'\]"):
    get_schedule("polynomial", kk=2)
  with pytest.raises(ValueError, match="k must be a finite real number > 0"):
    get_schedule("polynomial", k=-1.0)
  assert get_schedule("polynomial", k=2.0).name == "polynomial"


def test_polynomial_exponent_accepts_real_scalars_not_bools():
  ref = get_schedule("polynomial", k=2.0)
  for k in (2, np.float32(2.0), np.int64(2), jnp.float32(2.0)):
    sched = get_schedule("polynomial", k=k)
    assert type(sched.k) is float and sched == ref
  for k in (True, np.bool_(True), 0.0, float("nan"), float("inf"), "2", jnp.ones(2)):
    with pytest.raises(ValueError, match=r"k must be a finite real number > 0 \(not a bool\)"):
      get_schedule("polynomial", k=k)


def test_time_grids():
  np.testing.assert_allclose(schedules.time_grid(4), [1, 0.75, 0.5, 0.25, 0])
  g = schedules.time_grid(10, "cosine")
  assert g[0] == 1.0 and g[-1] == 0.0 and np.all(np.diff(np.asarray(g)) < 0)
  with pytest.raises(ValueError, match="unknown time grid"):
    schedules.time_grid(4, "log")
