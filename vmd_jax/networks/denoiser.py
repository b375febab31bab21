"""The masked-diffusion denoiser p_theta(x_0 | x_t, t [, z]) (md4's DiT-style model).

  h = Embed_{V+1}(x_t)  [then Dense_W if embed_dim E > 0]    [B, N, W]
      (MDM-Prime, l digits: concat_k Embed^k_{b+1}(d_t^k), widths W_k summing to W or E)
  c = Dense_C(silu(Dense_T'(sinusoid_T(1000 t)))) [+ Dense(z) if latent_mode = "adaln"]
                                                             [B, C]
  h = Transformer(h, c)   (adaLN-zero blocks, RoPE, final modulated LayerNorm)
  logits = Dense_V(h)     zero-initialised, float32 [B, N, V]

The head covers the V tokens only (the mask id V is never predicted), and at
initialisation the logits are exactly 0, so MD4's NELBO is N log V.

md4's text8 network (google-deepmind/md4: ``DiscreteClassifier`` with
``outside_embed``, ``feature_dim`` 64, ``mlp_type="glu"``,
``cond_type="adaln_zero"``, ``depth_scaled_init``) is ``embed_dim=64,
cond_dim=64, time_features=64, time_hidden=256, mlp_ratio=8/3,
mlp_multiple_of=32, mlp_type="glu", use_bias=False, depth_scaled_init=True,
absolute_positions=False``: 3,702,336 parameters at width 256, depth 4 and
88,734,272 at width 768, depth 12 (V = 27).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from vmd_jax.networks.transformer import Dtype, Transformer, timestep_embedding
from vmd_jax.prime import digit_base

LATENT_MODES = ("adaln", "add", "prefix")
# How the latent projection Dense(z) starts: "zeros" makes a VMD denoiser at
# initialisation exactly its MD4 twin (z has no effect until the gradient, which
# is non-zero, grows the projection).
LATENT_INITS = {"lecun_normal": nn.initializers.lecun_normal(), "zeros": nn.initializers.zeros}


def _per_token(x):
  """[B, C] -> [B, 1, C]; [B, N, C] unchanged."""
  return x[:, None] if x.ndim == 2 else x


def _prefix_mask(mask, num_queries: int, num_keys: int):
  """Adds the latent token in front of queries and keys: it attends to itself
  only and every token attends to it; other pairs follow ``mask``."""
  if mask is None:
    mask = jnp.ones((1, 1, num_queries, num_keys), bool)
  mask = jnp.broadcast_to(mask, mask.shape[:2] + (num_queries, num_keys))
  mask = jnp.pad(mask, ((0, 0), (0, 0), (1, 0), (1, 0)), constant_values=False)
  return mask.at[..., 0].set(True)


def digit_widths(width: int, num_digits: int) -> list[int]:
  """W split into l widths as evenly as possible, the larger ones first."""
  return [width // num_digits + (k < width % num_digits) for k in range(num_digits)]


class DigitEmbed(nn.Module):
  """MDM-Prime's sub-token embedding: x_t digits [B, N, l] in [0, b] (b the digit
  mask) -> concat_k Embed^k_{b+1}(d^k) [B, N, W], table k of width
  ``digit_widths(W, l)[k]``. For l = 1 (b = V) it is the token embedding
  Embed_{V+1} (table "digit_0")."""

  vocab_size: int
  num_digits: int
  width: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, digits):
    base = digit_base(self.vocab_size, self.num_digits)
    if digits.ndim != 3 or digits.shape[-1] != self.num_digits:
      raise ValueError(f"x_t must be digits [B, N, {self.num_digits}], got shape {digits.shape}")
    parts = [nn.Embed(base + 1, w, param_dtype=self.param_dtype,
                      name=f"digit_{k}")(digits[..., k])
             for k, w in enumerate(digit_widths(self.width, self.num_digits))]
    return jnp.concatenate(parts, axis=-1)


class Denoiser(nn.Module):
  """Bidirectional transformer denoiser, optionally conditioned on a latent z.

  Attributes:
    vocab_size: V; inputs are ids in [0, V], V being the mask.
    width, depth, num_heads: transformer size (width divisible by num_heads,
      width / num_heads even for RoPE).
    mlp_ratio, mlp_multiple_of: the GLU's hidden size, int(mlp_ratio * width)
      rounded up to a multiple of mlp_multiple_of (md4: 8/3 and 32, 704 at
      width 256, 2048 at 768).
    mlp_type: the GLU's gate activation, also applied to c before each adaLN
      Dense: "swiglu" (silu), "geglu" (gelu), "glu" (sigmoid, md4's text8).
    use_bias: biases in the attention, MLP and head projections (md4: none).
    depth_scaled_init: MLP kernels' init variance 2 / depth / fan_in (md4).
    dropout_rate: dropout after attention and MLP (active with ``train=True``,
      which then needs a "dropout" rng).
    dtype: compute dtype (e.g. jnp.bfloat16); params are ``param_dtype``.
    time_conditioning: feed t to adaLN; without it c = 0 (plus the latent).
    cond_dim: C, the size of the conditioning vector c that drives adaLN;
      None: width (md4's text8 model uses 64).
    time_features, time_hidden: T, the sinusoid's size, and T', the time
      MLP's hidden size (None: C); md4: T = C, T' = 4 C.
    embed_dim: E; 0 embeds tokens at the width, E > 0 embeds them at E and
      projects to the width with a Dense (md4's ``outside_embed``, E = 64).
    attention: "xla", "cudnn" (``jax.nn.dot_product_attention``) or "einsum".
    remat: recompute each block in the backward pass (``nn.remat``).
    absolute_positions: add sinusoidal features of ``positions`` to the token
      embeddings. RoPE alone is blind to absolute position when every token is
      the mask, so without them an all-mask input gets the same distribution at
      every position (fatal for one-step generation from z).
    learned_positions: P > 0 adds a learned embedding of each position in
      [0, P) instead of the sinusoidal one (e.g. Sudoku, whose rows, columns and
      boxes are not a 1-D distance); 0 keeps the sinusoid.
    prime_digits: l > 1 reads x_t as MDM-Prime digits [B, N, l] (``DigitEmbed``);
      1 reads tokens [B, N]. The head is over the V tokens either way.
    latent_dim: D, 0 for no latent.
    latent_mode: how z enters: "adaln" (Dense(z) added to the time embedding
      that drives adaLN), "add" (Dense(z) added to every token embedding) or
      "prefix" (Dense(z) as one extra token in front, attending to itself only,
      attended to by all, position 0, dropped from the output).
    latent_init: the initialiser of that Dense's kernel, a key of
      ``LATENT_INITS``: "zeros" starts the model as exactly the model without z.
  """

  vocab_size: int
  width: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  time_conditioning: bool = True
  cond_dim: int | None = None
  time_features: int = 256
  time_hidden: int | None = None
  embed_dim: int = 0
  mlp_multiple_of: int = 1
  mlp_type: str = "swiglu"
  use_bias: bool = True
  depth_scaled_init: bool = False
  attention: str = "xla"
  remat: bool = False
  absolute_positions: bool = True
  learned_positions: int = 0
  prime_digits: int = 1
  latent_dim: int = 0
  latent_mode: str = "adaln"
  latent_init: str = "lecun_normal"

  @nn.compact
  def __call__(self, xt, t, z=None, *, train: bool = False, positions=None,
               attention_mask=None, kv_prefix=None):
    """Logits of x_0.

    Args:
      xt: int [B, N] in [0, V]; with prime_digits = l > 1, digits [B, N, l] in [0, b].
      t: float [B] (or [B, N], a time per token, e.g. per block; or a scalar).
      z: float [B, D] (or [B, N, D], a latent per token, for "adaln"/"add");
        given iff latent_dim > 0.
      train: enables dropout.
      positions: int [B or 1, N] RoPE positions; default arange(N) (with a
        kv_prefix of M tokens pass those of this call, e.g. M + arange(N)).
      attention_mask: bool broadcastable to [B, heads, N, M + N] (True: may
        attend); None lets every token see every token.
      kv_prefix: None or, per layer, the rotated (k, v) [B, M, heads, Dh] of
        earlier tokens, as sown into the "kv_cache" collection by an earlier call
        (``apply(..., mutable=["kv_cache"])``, see ``transformer.collect_kv``).
        Not with latent_mode="prefix".

    Returns:
      float32 logits [B, N, V].
    """
    if self.latent_mode not in LATENT_MODES:
      raise ValueError(f"unknown latent_mode {self.latent_mode!r}; "
                       f"accepted: {list(LATENT_MODES)}")
    if self.latent_init not in LATENT_INITS:
      raise ValueError(f"unknown latent_init {self.latent_init!r}; "
                       f"accepted: {list(LATENT_INITS)}")
    if (z is not None) != (self.latent_dim > 0):
      raise ValueError(f"z must be given iff latent_dim > 0; latent_dim="
                       f"{self.latent_dim}, z is {'given' if z is not None else 'None'}")
    batch_size, length = xt.shape[:2]
    if positions is None:
      positions = jnp.arange(length)[None]
    t = jnp.asarray(t, jnp.float32)
    if t.ndim == 0:
      t = jnp.full((batch_size,), t)

    cond_dim = self.cond_dim or self.width
    embed_width = self.embed_dim or self.width
    if self.prime_digits > 1:
      h = DigitEmbed(self.vocab_size, self.prime_digits, embed_width, self.param_dtype,
                     name="digit_embed")(xt).astype(jnp.float32)
    else:
      h = nn.Embed(self.vocab_size + 1, embed_width, param_dtype=self.param_dtype,
                   name="embed")(xt).astype(jnp.float32)
    if self.embed_dim:
      h = nn.Dense(self.width, param_dtype=self.param_dtype, name="embed_proj")(h)
    if self.learned_positions:
      h = h + nn.Embed(self.learned_positions, self.width, param_dtype=self.param_dtype,
                       name="position_embed")(jnp.broadcast_to(positions, (batch_size, length)))
    elif self.absolute_positions:
      # RoPE alone cannot tell positions apart when every token is the mask (all
      # values equal), so one-step generation from z would give every position
      # the same distribution; sinusoidal absolute positions break that symmetry.
      h = h + timestep_embedding(jnp.broadcast_to(positions, (batch_size, length)).astype(jnp.float32),
                                 self.width, scale=1.0)
    if self.time_conditioning:
      c = timestep_embedding(t, self.time_features)
      c = nn.Dense(self.time_hidden or cond_dim, param_dtype=self.param_dtype,
                   name="time_mlp_0")(c)
      c = nn.Dense(cond_dim, param_dtype=self.param_dtype, name="time_mlp_1")(nn.silu(c))
      c = _per_token(c)
    else:
      c = jnp.zeros((batch_size, 1, cond_dim), jnp.float32)

    if z is not None:
      if z.ndim not in (2, 3) or z.shape[-1] != self.latent_dim:
        raise ValueError(f"z must be [B, latent_dim={self.latent_dim}] or "
                         f"[B, N, latent_dim], got shape {z.shape}")
      zp = nn.Dense(cond_dim if self.latent_mode == "adaln" else self.width,
                    kernel_init=LATENT_INITS[self.latent_init], param_dtype=self.param_dtype,
                    name="latent_proj")(z.astype(jnp.float32))
      if self.latent_mode == "adaln":
        c = c + _per_token(zp)
      elif self.latent_mode == "add":
        h = h + _per_token(zp)
      else:
        if z.ndim != 2:
          raise ValueError(f"latent_mode='prefix' needs z of shape [B, D], got {z.shape}")
        if kv_prefix is not None:
          raise ValueError("kv_prefix is not supported with latent_mode='prefix'")
        h = jnp.concatenate([zp[:, None], h], axis=1)
        positions = jnp.concatenate(
            [jnp.zeros_like(positions[:, :1]), positions], axis=1)
        attention_mask = _prefix_mask(attention_mask, length, length)
        if c.shape[1] > 1:
          c = jnp.concatenate([c[:, :1], c], axis=1)

    h = Transformer(self.depth, self.num_heads, self.mlp_ratio, self.dropout_rate,
                    self.dtype, self.param_dtype, mlp_multiple_of=self.mlp_multiple_of,
                    mlp_type=self.mlp_type, use_bias=self.use_bias,
                    depth_scaled_init=self.depth_scaled_init, attention=self.attention,
                    remat=self.remat, name="transformer")(
                        h, c, positions, attention_mask, kv_prefix,
                        deterministic=not train)
    if self.latent_dim > 0 and self.latent_mode == "prefix":
      h = h[:, 1:]
    return nn.Dense(self.vocab_size, use_bias=self.use_bias, kernel_init=nn.initializers.zeros,
                    dtype=jnp.float32, param_dtype=self.param_dtype, name="head")(h)
