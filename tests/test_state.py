"""The optimizer and the EMA against values computed by hand, and checkpoint
retention counted: the parts of training whose mistakes no loss curve shows."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vmd_jax.trainer import checkpoint
from vmd_jax.trainer import state as state_lib

PEAK, END, WARMUP, STEPS, DECAY, CLIP = 0.1, 0.1, 2, 6, 0.5, 1.0


def _train_config(**overrides):
  tc = ml_collections.ConfigDict(dict(lr=PEAK, warmup_steps=WARMUP, num_steps=STEPS,
                                      end_lr_factor=END, weight_decay=DECAY, b1=0.9, b2=0.999,
                                      grad_clip=CLIP, schedule_lr=0.0))
  tc.update(overrides)
  return tc


def expected_lr(step):
  """Linear warmup 0 -> PEAK over WARMUP steps, then a cosine to PEAK * END at STEPS."""
  if step < WARMUP:
    return PEAK * step / WARMUP
  frac = min(step - WARMUP, STEPS - WARMUP) / (STEPS - WARMUP)
  end = PEAK * END
  return end + (PEAK - end) * 0.5 * (1 + math.cos(math.pi * frac))


def test_make_optimizer_warmup_cosine_end_factor_decay_mask_and_clipping():
  """A constant gradient 0.5 on a 2x2 matrix and a bias (global norm 1.22 > clip 1):
  Adam's bias-corrected step is g / |g| = 1, so each update is -lr(k) on the bias and
  -lr(k) (1 + weight_decay * p) on the matrix (decay on matrices only), with lr(k)
  0, 0.05, 0.1 (peak), the cosine, down to 0.01 (end factor) at step 6; Adam's
  first moment holds the clipped gradient."""
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  tx = state_lib.make_optimizer(_train_config())
  opt_state, update = tx.init(params), jax.jit(tx.update)
  lrs = []
  for k in range(STEPS + 1):
    updates, opt_state = update(grads, opt_state, params)
    lrs.append(-float(updates["b"][0]))
    np.testing.assert_allclose(updates["w"], -expected_lr(k) * (1 + DECAY), rtol=1e-5,
                               atol=1e-7)
    if k == 0:
      mu = jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
      mu = [s.mu for s in mu if hasattr(s, "mu")][0]
      np.testing.assert_allclose(mu["b"], 0.1 * 0.5 / math.sqrt(6 * 0.25), rtol=1e-6)
  np.testing.assert_allclose(lrs, [expected_lr(k) for k in range(STEPS + 1)], rtol=1e-5,
                             atol=1e-7)
  assert lrs[0] == 0.0 and abs(lrs[2] - PEAK) < 1e-6 and abs(lrs[-1] - PEAK * END) < 1e-6, lrs


def test_ema_update_is_its_formula():
  """min(d, (1 + s) / (10 + s)) e + (1 - that) p; decay 0: the parameters."""
  ema, params = {"a": jnp.zeros(3)}, {"a": jnp.ones(3)}
  for step, d in [(0, 0.1), (5, 6 / 15), (100, 0.9)]:
    out = state_lib.ema_update(ema, params, jnp.int32(step), 0.9)
    np.testing.assert_allclose(out["a"], 1 - d, rtol=1e-6)
  chex.assert_trees_all_equal(state_lib.ema_update(ema, params, jnp.int32(3), 0.0), params)


def test_keep_checkpoints_keeps_that_many_newest_steps(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / "checkpoints", keep=2, every=1)
  for step in range(1, 6):
    ckpt.save(step, {"x": jnp.full((2,), float(step))})
  ckpt.close()
  assert sorted(int(n.name) for n in (tmp_path / "checkpoints").iterdir()) == [4, 5]
