"""Precision: the exact denoisers and the prior's EM fit ask for full float32
matmuls; ``model.dtype = "bfloat16"`` is TPU's usual mixed precision (bf16
matmuls, float32 parameters).

By default accelerators round float32 matmul inputs (TF32 on GPUs: 10 mantissa
bits; bfloat16 passes on TPUs). On the CPU every precision computes the same, so the
float32 tests read the compiled program's request rather than its numbers: every
dot in it must say HIGHEST.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vmd_jax import exact, genmd4, prime, prior

V, N = 3, 2
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_bfloat16_step_multiplies_in_bfloat16():
  """With ``model.dtype = "bfloat16"`` the parameters are float32 and the loss's
  matmuls take bf16 operands, except the head's (float32)."""
  from vmd_jax.trainer import build, config as config_lib
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "synthetic_md4.py"))
  c.model.dtype = "bfloat16"
  model = build.build_model(c, 10, 4)
  params = model.init(jax.random.key(0), np.zeros((1, 4), np.int32))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  x0 = jnp.zeros((8, 4), jnp.int32)
  text = jax.jit(lambda p: model.loss(p, x0, jax.random.key(0))["loss"]).lower(params).as_text()
  operands = re.findall(r"dot_general.*?: \(tensor<[^>]*x(\w+)>, tensor<[^>]*x(\w+)>\)", text)
  assert operands and {a for a, b in operands} == {"bf16", "f32"}, operands
  assert sum(a == "bf16" for a, _ in operands) >= 4  # qkv, attention x2, out, MLP
