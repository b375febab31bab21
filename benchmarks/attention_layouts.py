"""One forward pass of the md4-probe denoiser (4 layers, 4 heads, width 256, batch
16 x 256, all masked, t = 0.5) with three layouts of the attention projections,
timed interleaved in one process so that load hits all alike:

- ``fused``: today's ``transformer.Attention``: one [W, 3, H, Dh] matmul, q, k, v
  sliced from its output, heads moved in front inside ``einsum_attention``;
- ``three``: the same kernel as three [W, H, Dh] matmuls (contiguous q, k, v);
- ``head_major``: the projections written straight into [B, H, N, Dh], RoPE and
  both attention matmuls in that layout, the output projection from it.

  PYTHONPATH=. python benchmarks/attention_layouts.py --rounds=9
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

import common
from vmd_jax.networks import transformer
from vmd_jax.trainer import build, config as config_lib

flags.DEFINE_integer("rounds", 9, "Timed calls per layout, interleaved.")
FLAGS = flags.FLAGS
B, VOCAB = 16, 27


def _rope_head_major(x, positions):
  """``transformer.apply_rope`` for x: [B, H, N, Dh]."""
  return jnp.swapaxes(transformer.apply_rope(jnp.swapaxes(x, 1, 2), positions), 1, 2)


class _Projections(nn.Module):
  """The attention of ``transformer.Attention`` (no mask, no prefix) with the
  projections laid out per ``layout``."""
  num_heads: int
  layout: str
  dtype: object = jnp.float32
  param_dtype: object = jnp.float32
  rope_base: float = 10000.0
  use_bias: bool = False
  implementation: str = "einsum"

  @nn.compact
  def __call__(self, x, positions, mask=None, kv_prefix=None):
    width, heads = x.shape[-1], self.num_heads
    dh = width // heads
    kernel = self.param("qkv", nn.initializers.lecun_normal(), (width, 3, heads, dh))
    out_kernel = self.param("out", nn.initializers.lecun_normal(), (heads, dh, width))
    if self.layout == "three":
      q, k, v = (jnp.einsum("bnw,whd->bnhd", x, kernel[:, i]) for i in range(3))
      q, k = transformer.apply_rope(q, positions), transformer.apply_rope(k, positions)
      return jnp.einsum("bnhd,hdw->bnw", transformer.einsum_attention(q, k, v), out_kernel)
    q, k, v = (jnp.einsum("bnw,whd->bhnd", x, kernel[:, i]) for i in range(3))
    q, k = _rope_head_major(q, positions) * dh ** -0.5, _rope_head_major(k, positions)
    probs = jax.nn.softmax(jnp.einsum("bhnd,bhmd->bhnm", q, k), axis=-1)
    return jnp.einsum("bhnm,bhmd,hdw->bnw", probs, v, out_kernel)


def main(_):
  c = config_lib.load_config_file("configs/text8_md4.py")
  c.model.width, c.model.depth, c.model.num_heads = 256, 4, 4
  fused = transformer.Attention
  layouts = {"fused": fused,
             "three": lambda *a, **k: _Projections(*a[:1], "three", *a[1:], **k),
             "head_major": lambda *a, **k: _Projections(*a[:1], "head_major", *a[1:], **k)}
  compiled = {}
  for name, attention in layouts.items():
    transformer.Attention = attention
    model = build.build_model(c, VOCAB, c.data.seq_len)
    x = jnp.full((B, c.data.seq_len), VOCAB, jnp.int32)
    params = model.init(jax.random.key(0), x)
    forward = jax.jit(lambda p, z, model=model: model.denoise_fn(p)(
        z, jnp.full((B,), 0.5, jnp.float32)))
    compiled[name] = (forward.lower(params, x).compile(), params, x)
    jax.block_until_ready(compiled[name][0](params, x))
  transformer.Attention = fused
  common.interleaved_medians(compiled, FLAGS.rounds)


if __name__ == "__main__":
  app.run(main)
