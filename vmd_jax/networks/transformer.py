"""Transformer building blocks: RoPE, attention with a KV prefix, adaLN-zero block.

Shapes: B batch, N tokens, W width, H heads, Dh = W / H head size, C the
conditioning size, F the GLU's hidden size. ``dtype`` is the compute dtype of the
matmuls (e.g. bf16), ``param_dtype`` that of the parameters; softmax, layer norms
and the residual stream are float32.

The md4 network (google-deepmind/md4 ``networks/transformer.py`` with
``cond_type="adaln_zero"``) is ``Transformer(mlp_ratio=8/3, mlp_multiple_of=32,
mlp_type="glu", use_bias=False, depth_scaled_init=True)``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
KV = tuple[jax.Array, jax.Array]

# The collection and name under which ``Attention`` sows this call's rotated (k, v).
KV_COLLECTION = "kv_cache"

# GLU variants (md4's ``mlp_type``): the gate's activation, also the one applied
# to the conditioning before each adaLN Dense (as in md4).
ACTIVATIONS = {"swiglu": nn.silu, "geglu": nn.gelu, "glu": nn.sigmoid}
# "xla" / "cudnn": ``jax.nn.dot_product_attention``'s implementations (cudnn:
# GPU, bf16/fp16 only); "einsum": softmax(q k^T / sqrt(Dh)) v written out.
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "einsum")


def glu_hidden_size(width: int, mlp_ratio: float, multiple_of: int = 1) -> int:
  """F = multiple_of * ceil(floor(mlp_ratio * width) / multiple_of).

  md4: mlp_ratio 8/3, multiple_of 32 gives 704 at width 256 and 2048 at 768."""
  hidden = int(mlp_ratio * width)
  return multiple_of * -(-hidden // multiple_of)


def einsum_attention(q, k, v, mask=None):
  """softmax(q k^T / sqrt(Dh) + log mask) v written out, the softmax in float32.

  Heads are moved in front ([B, H, N, Dh]) before the two batched matmuls, so
  each is a plain batched matmul; on XLA:CPU this runs faster than
  ``jax.nn.dot_product_attention``'s einsums (benchmarks/train_step.py).

  q: [B, N, H, Dh]; k, v: [B, M, H, Dh]; mask: bool broadcastable to
  [B, H, N, M] (True: may attend; every query needs one key). Returns
  [B, N, H, Dh] in q's dtype."""
  q = jnp.swapaxes(q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), 1, 2)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  scores = jnp.matmul(q, jnp.swapaxes(k, 2, 3), preferred_element_type=jnp.float32)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.swapaxes(jnp.matmul(probs, v), 1, 2)


def apply_rope(x, positions, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021), half-split form.

  With x = [x1, x2] split along the head dimension and theta_j = base^(-2j/Dh),
    rope(x)_p = [x1 cos(p theta) - x2 sin(p theta), x2 cos(p theta) + x1 sin(p theta)],
  so <rope(q)_p, rope(k)_r> depends on p - r only.

  Args:
    x: [B, N, H, Dh], Dh even.
    positions: int [B or 1, N].
    base: the frequency base.

  Returns:
    [B, N, H, Dh] in x's dtype (computed in float32).
  """
  half = x.shape[-1] // 2
  if 2 * half != x.shape[-1]:
    raise ValueError(f"RoPE needs an even head size, got {x.shape[-1]}")
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions.astype(jnp.float32)[..., None, None] * freqs  # [B, N, 1, Dh/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


class Attention(nn.Module):
  """Multi-head self-attention with RoPE and an optional KV prefix.

  out = softmax(q k^T / sqrt(Dh) + log mask) v over the keys [k_prefix ; k],
  q and k rotated by ``apply_rope`` at their positions.

  The rotated (k, v) of this call (not the prefix) are sown into the
  ``"kv_cache"`` collection as ``"kv"`` (in ``apply`` with that collection
  mutable, never in ``init``). Concatenated along axis 1 over calls they form a
  ``kv_prefix`` for later calls, and attention with the prefix equals attention
  over the concatenated sequence.
  """

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  rope_base: float = 10000.0
  use_bias: bool = True
  implementation: str = "xla"  # one of ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x, positions, mask=None, kv_prefix: KV | None = None):
    """x: [B, N, W]; positions: int [B or 1, N]; mask: bool broadcastable to
    [B, H, N, M + N] (True: may attend); kv_prefix: (k, v), each [B, M, H, Dh],
    already rotated. Returns [B, N, W] in ``dtype``."""
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    if self.implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f"unknown attention implementation {self.implementation!r}; "
                       f"accepted: {list(ATTENTION_IMPLEMENTATIONS)}")
    qkv = nn.DenseGeneral((3, self.num_heads, head_dim), use_bias=self.use_bias,
                          dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = apply_rope(q, positions, self.rope_base)
    k = apply_rope(k, positions, self.rope_base)
    if not self.is_initializing():
      self.sow(KV_COLLECTION, "kv", (k, v), reduce_fn=lambda _, new: new,
               init_fn=lambda: None)
    if mask is not None and jnp.ndim(mask) < 4:  # e.g. [N, M + N]
      mask = jnp.reshape(mask, (1,) * (4 - jnp.ndim(mask)) + jnp.shape(mask))
    if kv_prefix is not None:
      k = jnp.concatenate([kv_prefix[0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([kv_prefix[1].astype(v.dtype), v], axis=1)
    if self.implementation == "einsum":
      out = einsum_attention(q, k, v, mask)
    else:  # float32 softmax
      out = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                         implementation=self.implementation)
    return nn.DenseGeneral(width, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="out")(out)


class SplitDense(nn.Module):
  """``nn.Dense(parts * features)``'s parameters ("kernel" [W, parts F], "bias"),
  applied as ``parts`` matmuls of F outputs each: (x W_1 + b_1, ..., x W_p + b_p).

  Equal to splitting the one Dense's output, but XLA:CPU runs the separate
  matmuls faster than the fused one followed by a split (a GLU's W_a, W_b:
  ``benchmarks/md4_forward_same_jax.py``)."""

  features: int
  parts: int = 2
  use_bias: bool = True
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  kernel_init: Any = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x):
    total = self.parts * self.features
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], total), self.param_dtype)
    bias = (self.param("bias", nn.initializers.zeros_init(), (total,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    outs = []
    for i in range(self.parts):
      part = slice(i * self.features, (i + 1) * self.features)
      y = jax.lax.dot_general(x, kernel[:, part], (((x.ndim - 1,), (0,)), ((), ())))
      outs.append(y if bias is None else y + bias[part])
    return tuple(outs)


class GLUMLP(nn.Module):
  """A GLU MLP (Shazeer 2020): W_out (act(x W_a) * (x W_b)), hidden size F =
  ``hidden``, act = ``ACTIVATIONS[mlp_type]`` (SwiGLU: silu; md4's "glu": sigmoid).
  W_a and W_b are one [W, 2F] kernel "wi" (``SplitDense``); ``kernel_init``
  initialises wi and wo."""

  hidden: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  mlp_type: str = "swiglu"
  use_bias: bool = True
  kernel_init: Any = nn.linear.default_kernel_init

  @nn.compact
  def __call__(self, x):
    a, b = SplitDense(self.hidden, 2, self.use_bias, self.dtype, self.param_dtype,
                      self.kernel_init, name="wi")(x)
    return nn.Dense(x.shape[-1], use_bias=self.use_bias, kernel_init=self.kernel_init,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="wo")(
                        ACTIVATIONS[self.mlp_type](a) * b)


def layer_norm(x):
  """Float32 LayerNorm without learned scale or bias (adaLN supplies them)."""
  return nn.LayerNorm(use_scale=False, use_bias=False, dtype=jnp.float32)(
      x.astype(jnp.float32))


def modulate(x, shift, scale):
  """adaLN: x (1 + scale) + shift."""
  return x * (1.0 + scale) + shift


def ada_ln(c, num: int, width: int, param_dtype: Dtype, name: str, activation=nn.silu):
  """``num`` modulation vectors from c [B, 1 or N, C]: a zero-initialised
  Dense(activation(c)) (DiT's adaLN-zero), each float32 [B, 1 or N, width]."""
  mod = nn.Dense(num * width, kernel_init=nn.initializers.zeros,
                 param_dtype=param_dtype, name=name)(activation(c.astype(jnp.float32)))
  return jnp.split(mod, num, axis=-1)


class Block(nn.Module):
  """Pre-LN transformer block with adaLN-zero conditioning (Peebles & Xie 2023):

    (s1, a1, g1, s2, a2, g2) = Dense_0(act(c))
    x = x + (g0 + g1) * Attn(LN(x) (1 + a1) + s1)
    x = x + (g0 + g2) * MLP(LN(x) (1 + a2) + s2)

  with g0 = ``gate_offset``. With g0 = 0 (adaLN-zero) the gates start at zero
  and the block starts as the identity; g0 = 1 starts as a plain pre-LN block.
  ``mlp_hidden`` is F; act, ``use_bias``, ``attention`` as in ``Transformer``.
  """

  num_heads: int
  mlp_hidden: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gate_offset: float = 0.0
  mlp_type: str = "swiglu"
  use_bias: bool = True
  mlp_init_scale: float = 1.0
  attention: str = "xla"

  @nn.compact
  def __call__(self, x, c, positions, mask=None, kv_prefix: KV | None = None,
               deterministic: bool = True):
    """x: float32 [B, N, W]; c: [B, 1 or N, C]; positions, mask, kv_prefix as in
    ``Attention``. Returns float32 [B, N, W]."""
    width = x.shape[-1]
    activation = ACTIVATIONS[self.mlp_type]
    s1, a1, g1, s2, a2, g2 = ada_ln(c, 6, width, self.param_dtype, "ada_ln", activation)
    h = modulate(layer_norm(x), s1, a1).astype(self.dtype)
    h = Attention(self.num_heads, self.dtype, self.param_dtype, use_bias=self.use_bias,
                  implementation=self.attention, name="attn")(h, positions, mask, kv_prefix)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    x = x + (self.gate_offset + g1) * h.astype(jnp.float32)
    h = modulate(layer_norm(x), s2, a2).astype(self.dtype)
    kernel_init = nn.initializers.variance_scaling(self.mlp_init_scale, "fan_in",
                                                   "truncated_normal")
    h = GLUMLP(self.mlp_hidden, self.dtype, self.param_dtype, self.mlp_type, self.use_bias,
               kernel_init, name="mlp")(h)
    h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    return x + (self.gate_offset + g2) * h.astype(jnp.float32)


class Transformer(nn.Module):
  """``depth`` Blocks then a final adaLN-modulated LayerNorm, float32 [B, N, W].

  ``kv_prefix`` is None or one (k, v) per layer; the per-layer (k, v) of this
  call are sown into ``"kv_cache"`` (see ``Attention``).

  Attributes:
    mlp_ratio, mlp_multiple_of: the GLU's hidden size F = ``glu_hidden_size``.
    mlp_type: a key of ``ACTIVATIONS``: the GLU's gate and the adaLN input's
      activation.
    use_bias: biases in the attention and MLP projections (md4 has none).
    depth_scaled_init: MLP kernels ~ truncated normal with variance
      (2 / depth) / fan_in (md4's ``depth_scaled_init``), else 1 / fan_in.
    attention: one of ``ATTENTION_IMPLEMENTATIONS``.
    remat: recompute each block's activations in the backward pass
      (``nn.remat``): memory O(1) blocks instead of O(depth), one more forward.
  """

  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  gate_offset: float = 0.0
  mlp_multiple_of: int = 1
  mlp_type: str = "swiglu"
  use_bias: bool = True
  depth_scaled_init: bool = False
  attention: str = "xla"
  remat: bool = False

  @nn.compact
  def __call__(self, x, c, positions, mask=None, kv_prefix=None, *,
               deterministic: bool = True):
    if kv_prefix is not None and len(kv_prefix) != self.depth:
      raise ValueError(f"kv_prefix has {len(kv_prefix)} layers, expected depth={self.depth}")
    if self.mlp_type not in ACTIVATIONS:
      raise ValueError(f"unknown mlp_type {self.mlp_type!r}; accepted: {list(ACTIVATIONS)}")
    x = x.astype(jnp.float32)
    width = x.shape[-1]
    block = nn.remat(Block, static_argnums=(6,)) if self.remat else Block
    for i in range(self.depth):
      x = block(self.num_heads, glu_hidden_size(width, self.mlp_ratio, self.mlp_multiple_of),
                self.dropout_rate, self.dtype, self.param_dtype, self.gate_offset,
                self.mlp_type, self.use_bias,
                2.0 / self.depth if self.depth_scaled_init else 1.0, self.attention,
                name=f"block_{i}")(
                    x, c, positions, mask, None if kv_prefix is None else kv_prefix[i],
                    deterministic)
    shift, scale = ada_ln(c, 2, width, self.param_dtype, "final_ada_ln",
                          ACTIVATIONS[self.mlp_type])
    return modulate(layer_norm(x), shift, scale)


def collect_kv(kv_cache) -> list[KV]:
  """The per-layer rotated (k, v), each [B, N, H, Dh], in layer order, from the
  ``"kv_cache"`` collection returned by ``apply(..., mutable=["kv_cache"])`` of a
  ``Transformer`` or of a module holding one as ``"transformer"`` (``Denoiser``)."""
  tree = kv_cache.get("transformer", kv_cache)
  depth = sum(name.startswith("block_") for name in tree)
  return [tree[f"block_{i}"]["attn"]["kv"] for i in range(depth)]


def timestep_embedding(t, dim: int = 256, max_period: float = 10000.0,
                       scale: float = 1000.0):
  """Sinusoidal features of s = scale * t: [cos(s w_j), sin(s w_j)] with
  w_j = max_period^(-j / (dim/2)), j < dim/2. t: [...] -> float32 [..., dim]."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = scale * t.astype(jnp.float32)[..., None] * freqs
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
