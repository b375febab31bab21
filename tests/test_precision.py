"""The exact denoisers and the prior's EM fit ask for full float32 matmuls.

By default accelerators round float32 matmul inputs (TF32 on GPUs: 10 mantissa
bits; bfloat16 passes on TPUs). On the CPU every precision computes the same, so
these tests read the compiled program's request rather than its numbers: every
dot in it must say HIGHEST.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact, genmd4, prime, prior

V, N = 3, 2


def dot_precisions(fn, *args) -> list[str]:
  """The precision of every dot_general in ``jit(fn)``'s StableHLO."""
  text = jax.jit(fn).lower(*args).as_text()
  dots = [line for line in text.splitlines() if "dot_general" in line]
  assert dots, "no matmul in the program"
  return [m.group(1) if (m := re.search(r"precision = \[(\w+), \w+\]", line)) else "DEFAULT"
          for line in dots]


def joint():
  p = np.random.default_rng(0).random(V**N)
  return p / p.sum()


@pytest.mark.parametrize("denoiser", ["md4", "genmd4", "prime"])
def test_exact_denoisers_use_full_float32_matmuls(denoiser):
  if denoiser == "md4":
    fn = exact.exact_denoiser(joint(), V, N)
  elif denoiser == "genmd4":
    fn = genmd4.exact_denoiser(joint(), genmd4.init_params(V), V, N)
  else:
    fn = prime.exact_digit_denoiser(joint(), prime.DigitCode(V, 2), N)
  mask = V if denoiser != "prime" else prime.DigitCode(V, 2).mask_id
  shape = (4, N) if denoiser != "prime" else (4, N, 2)
  x_t = jnp.full(shape, mask, jnp.int32)
  assert set(dot_precisions(lambda x: fn(x, jnp.full((4,), 0.5)), x_t)) == {"HIGHEST"}


def test_prior_em_fit_uses_full_float32_matmuls():
  z = jax.random.normal(jax.random.key(0), (64, 3))
  fit = lambda z: prior.fit_gaussian_mixture(z, 2, jax.random.key(1), num_iters=2).means
  assert set(dot_precisions(fit, z)) == {"HIGHEST"}
