"""VMD's amortised posterior q(z | x_0 [, x_t]) = N(mean, diag(exp(logvar))).

  h = Embed_V(x_0) [+ Embed_{V+1}(x_t) if sees_xt]        [B, N, W]
  h = Transformer(h, c = 0)     bidirectional, RoPE, gates offset by 1
  g = mean_n h_n  or  h_cls                               [B, W]
  (mean, raw) = Dense_{2D}(g),  logvar = soft_clip(raw, logvar_min, logvar_max)

Block VMD (``block_size`` L' > 0): one latent per block, q(z_b | x_0^{<=b}). The
transformer is block-causal (a token of block b sees the blocks <= b) and g_b is
the mean of h over block b, so mean and logvar are [B, K, D] with K = N / L'.

The blocks are the denoiser's adaLN blocks with a zero conditioning (C = 1), so
their modulation is a learned bias: a LayerNorm affine and a residual gate 1 + g,
g = 0 at init (a plain pre-LN block; with adaLN-zero gates a "cls" token would
start independent of x_0).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vmd_jax.block import num_blocks
from vmd_jax.networks.transformer import Dtype, Transformer

POOLINGS = ("mean", "cls")


def soft_clip(x, lo: float, hi: float):
  """A smooth clip into (lo, hi): lo + softplus(hi - softplus(hi - x) - lo).

  Close to the identity well inside the range (|error| < 0.01 at x = 0 for
  [-10, 5]), never outside it, and with a non-zero gradient everywhere."""
  upper = hi - jax.nn.softplus(hi - x)
  return lo + jax.nn.softplus(upper - lo)


class LatentEncoder(nn.Module):
  """q(z | x_0 [, x_t]): a small bidirectional transformer, pooled.

  Attributes:
    vocab_size: V; x_0 in [0, V), x_t in [0, V] (V the mask).
    width, depth, num_heads, mlp_ratio, dropout_rate, dtype, param_dtype: as in
      ``Denoiser``.
    latent_dim: D.
    sees_xt: add an embedding of x_t to that of x_0 (then no likelihood bound;
      docs/vmd_settings.md).
    pooling: "mean" over tokens, or "cls" (a learned token in front).
    logvar_min, logvar_max: the range of the soft clip on logvar.
    init_scale: the output Dense's kernel ~ N(0, init_scale^2 / W), so q starts
      near N(0, I) but depends on x_0.
    block_size: 0 for one latent per sequence; L' > 0 for one latent per block
      of L' tokens (block-causal attention, mean pooling per block).
    attention, remat: as in ``Denoiser``.
  """

  vocab_size: int
  width: int
  depth: int
  num_heads: int
  latent_dim: int
  sees_xt: bool = False
  pooling: str = "mean"
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  logvar_min: float = -10.0
  logvar_max: float = 5.0
  init_scale: float = 0.1
  block_size: int = 0
  attention: str = "xla"
  remat: bool = False

  @nn.compact
  def __call__(self, x0, xt=None, *, train: bool = False):
    """x0: int [B, N]; xt: int [B, N], used iff sees_xt (ignored otherwise, so
    the encoder fits ``vmd_loss``'s ``encode_fn(x0, xt, t)``).

    Returns:
      (mean, logvar), float32 [B, D] each ([B, K, D] with ``block_size``).
    """
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown pooling {self.pooling!r}; accepted: {list(POOLINGS)}")
    if self.block_size:
      if self.pooling != "mean":
        raise ValueError(f"block_size={self.block_size} needs pooling='mean', got "
                         f"pooling={self.pooling!r}")
      num_blocks(x0.shape[1], self.block_size)  # L' must divide L
    if self.sees_xt and xt is None:
      raise ValueError("sees_xt=True needs xt")
    batch_size, length = x0.shape
    h = nn.Embed(self.vocab_size, self.width, param_dtype=self.param_dtype,
                 name="embed_x0")(x0)
    if self.sees_xt:
      h = h + nn.Embed(self.vocab_size + 1, self.width, param_dtype=self.param_dtype,
                       name="embed_xt")(xt)
    positions = jnp.arange(length)[None]
    if self.pooling == "cls":
      cls = self.param("cls", nn.initializers.normal(1.0), (self.width,),
                       self.param_dtype)
      h = jnp.concatenate([jnp.broadcast_to(cls, (batch_size, 1, self.width)), h], 1)
      positions = jnp.arange(-1, length)[None]
    c = jnp.zeros((batch_size, 1, 1), jnp.float32)  # only the adaLN biases act
    mask = None
    if self.block_size:
      block = jnp.arange(length) // self.block_size
      mask = block[:, None] >= block[None, :]
    h = Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dropout_rate,
                    self.dtype, self.param_dtype, gate_offset=1.0, attention=self.attention,
                    remat=self.remat, name="transformer")(
                        h, c, positions, mask, deterministic=not train)
    if self.block_size:
      pooled = jnp.mean(h.reshape(batch_size, -1, self.block_size, h.shape[-1]), axis=2)
    else:
      pooled = h[:, 0] if self.pooling == "cls" else jnp.mean(h, axis=1)
    kernel_init = nn.initializers.variance_scaling(self.init_scale**2, "fan_in", "normal")
    out = nn.Dense(2 * self.latent_dim, kernel_init=kernel_init, dtype=jnp.float32,
                   param_dtype=self.param_dtype, name="head")(pooled)
    mean, raw_logvar = jnp.split(out, 2, axis=-1)
    return mean, soft_clip(raw_logvar, self.logvar_min, self.logvar_max)
