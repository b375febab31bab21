"""md4's own network and ours, one forward pass each, in one process on this
project's JAX, timed interleaved: separates the network from the JAX version.

md4's side is ``md4.models.backward.DiscreteClassifier`` from md4's source (the
public google-deepmind/md4, unpacked at ``$MD4_SRC``, default ``~/.cache/md4src``;
only read), built as md4's ``configs/md4/text8.py`` builds it, cut to the probe size
(4 layers, 4 heads, feature_dim 64: width 256). Ours is ``configs/text8_md4.py``'s
denoiser at the same size. Both get an all-mask batch of 16 x 256 at t = 0.5, fp32,
jitted with the parameters as arguments.

  MD4_SRC=~/.cache/md4src PYTHONPATH=. python benchmarks/md4_forward_same_jax.py --rounds=15
"""

import os
import sys

import jax
import jax.numpy as jnp
from absl import app, flags

import common
from vmd_jax.trainer import build, config as config_lib

flags.DEFINE_integer("rounds", 15, "Timed calls per side, interleaved.")
FLAGS = flags.FLAGS
B, N, V, LAYERS, HEADS, WIDTH = 16, 256, 27, 4, 4, 256


def md4_forward():
  sys.path.insert(0, os.path.expanduser(os.environ.get("MD4_SRC", "~/.cache/md4src")))
  from md4.configs.md4 import text8  # pylint: disable=import-outside-toplevel
  from md4.models import backward  # pylint: disable=import-outside-toplevel
  c = text8.get_config()
  net = backward.DiscreteClassifier(
      n_layers=LAYERS, feature_dim=WIDTH // HEADS, num_heads=HEADS, vocab_size=c.vocab_size,
      dropout_rate=0.0, mlp_type=c.mlp_type, depth_scaled_init=c.depth_scaled_init,
      cond_type=c.cond_type, outside_embed=c.outside_embed)
  x = jnp.full((B, N), V, jnp.int32)
  t = jnp.full((B,), 0.5)
  params = net.init(jax.random.key(0), x, t=t)
  return jax.jit(lambda p, z: net.apply(p, z, t=t)), params, x


def our_forward():
  c = config_lib.load_config_file("configs/text8_md4.py")
  c.model.width, c.model.depth, c.model.num_heads, c.model.dropout = WIDTH, LAYERS, HEADS, 0.0
  model = build.build_model(c, V, N)
  x = jnp.full((B, N), V, jnp.int32)
  params = model.init(jax.random.key(0), x)
  return jax.jit(lambda p, z: model.denoise_fn(p)(z, jnp.full((B,), 0.5))), params, x


def main(_):
  sides = {}
  for name, make in (("md4", md4_forward), ("vmd_jax", our_forward)):
    fn, params, x = make()
    compiled = fn.lower(params, x).compile()
    jax.block_until_ready(compiled(params, x))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    sides[name] = (compiled, params, x)
    print(f"{name}: {n_params:,} parameters, {common.flops_of(compiled) / 1e9:.2f} GFLOPs per forward")
  medians = common.interleaved_medians(sides, FLAGS.rounds)
  print(f"md4 / vmd_jax: {medians['md4'] / medians['vmd_jax']:.3f}"
        f"; load averages {os.getloadavg()}; jax {jax.__version__}")


if __name__ == "__main__":
  app.run(main)
