"""MDM-Prime's sub-token code (Chao et al. 2025, arXiv 2505.18495): tokens as digits.

Each token x in {0..V-1} is written as l digits in base b = ceil(V^(1/l)) (the
least integer with b^l >= V, found with integers), big-endian:
x = sum_k d_k b^(l-1-k). Codes in [V, b^l) are invalid and never produced. The
digit mask id is b. ``DigitCode(vocab_size, num_digits)`` holds (V, l).

Pure JAX and NumPy, no Flax, no config; ``vmd_jax.prime`` builds the NELBO and the
samplers on it. ``check_digits`` is the digit arguments' check, as
``forward.check_tokens`` is the tokens'.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from vmd_jax import forward


def digit_base(vocab_size: int, num_digits: int) -> int:
  """The least integer b >= 2 with b^l >= V (integer arithmetic, no float roots)."""
  if vocab_size < 2 or num_digits < 1:
    raise ValueError(f"need vocab_size >= 2 and num_digits >= 1, got {vocab_size}, {num_digits}")
  b = max(2, int(round(vocab_size ** (1.0 / num_digits))))
  while b**num_digits < vocab_size:
    b += 1
  while b > 2 and (b - 1) ** num_digits >= vocab_size:
    b -= 1
  return b


@dataclasses.dataclass(frozen=True)
class DigitCode:
  """The invertible sub-token code: V tokens <-> l big-endian digits in base b.

  Hashable, so it can be a static argument of ``jax.jit``.
  """

  vocab_size: int
  num_digits: int

  def __post_init__(self):
    b, l = digit_base(self.vocab_size, self.num_digits), self.num_digits  # validates
    if b**l > jnp.iinfo(jnp.int32).max:
      raise ValueError(f"{l} digits in base {b} make {b}^{l} codes, more than int32 tokens "
                       f"hold: use fewer digits (prime_digits)")

  @property
  def base(self) -> int:
    """b = ceil(V^(1/l))."""
    return digit_base(self.vocab_size, self.num_digits)

  @property
  def mask_id(self) -> int:
    """The digit mask id, b."""
    return self.base

  @property
  def num_codes(self) -> int:
    """b^l >= V; codes in [V, b^l) are invalid."""
    return self.base**self.num_digits

  def powers(self):
    """b^(l-1-k), int32 [l]."""
    return jnp.asarray([self.base ** (self.num_digits - 1 - k) for k in range(self.num_digits)],
                       jnp.int32)

  def to_digits(self, x):
    """int tokens [...] in [0, V) -> int digits [..., l] in [0, b), big-endian."""
    x = jnp.asarray(x)
    return ((x[..., None] // self.powers().astype(x.dtype)) % self.base).astype(x.dtype)

  def from_digits(self, d):
    """int digits [..., l] (no masks) -> int tokens [...] = sum_k d_k b^(l-1-k)."""
    d = jnp.asarray(d)
    return jnp.sum(d * self.powers().astype(d.dtype), axis=-1)

  def tokens_to_digits(self, x):
    """int tokens [...] in [0, V] (V the token mask) -> digits [..., l] in [0, b]
    (a masked token has every digit masked)."""
    x = jnp.asarray(x)
    digits = self.to_digits(jnp.minimum(x, self.vocab_size - 1))
    return jnp.where((x == self.vocab_size)[..., None], jnp.asarray(self.mask_id, x.dtype),
                     digits)

  def check_packable(self) -> None:
    """Raises ``ValueError`` unless ``pack``'s (b+1)^l codes fit int32."""
    b, l = self.base, self.num_digits
    if (b + 1) ** l > jnp.iinfo(jnp.int32).max:
      raise ValueError(f"{l} digits in base {b} and the digit mask make {b + 1}^{l} packed "
                       "codes, more than int32 holds; block diffusion packs a token's digits "
                       "into one int: use fewer digits (prime_digits)")

  def pack(self, d):
    """int digits [..., l] in [0, b] (masks allowed) -> one int [...] in
    [0, (b+1)^l): the digits read in base b + 1. Lets [B, L] machinery (the block
    KV cache) carry digit inputs unchanged; ``unpack`` inverts it. Raises
    ``ValueError`` when (b+1)^l does not fit int32 (``check_packable``)."""
    self.check_packable()
    d = jnp.asarray(d).astype(jnp.int32)  # (b+1)^l may not fit the digits' own dtype
    powers = [(self.base + 1) ** (self.num_digits - 1 - k) for k in range(self.num_digits)]
    return jnp.sum(d * jnp.asarray(powers, d.dtype), axis=-1)

  def unpack(self, p):
    """Inverse of ``pack``: int [...] -> digits [..., l] in [0, b]."""
    p = jnp.asarray(p)
    powers = [(self.base + 1) ** (self.num_digits - 1 - k) for k in range(self.num_digits)]
    return (p[..., None] // jnp.asarray(powers, p.dtype)) % (self.base + 1)

  def consistent_tokens(self, x_t):
    """bool [..., V]: token v agrees with every revealed digit of x_t [..., l]."""
    table = self.to_digits(jnp.arange(self.vocab_size, dtype=jnp.int32))  # [V, l]
    x_t = jnp.asarray(x_t)
    ok = (x_t[..., None, :] == self.mask_id) | (x_t[..., None, :] == table)
    return jnp.all(ok, axis=-1)

  def count_consistent(self, d, revealed, xp=jnp):
    """|C_S(d)|: the number of valid tokens v < V with d_k(v) = d_k for every k
    with revealed[..., k], float32 [...]. Digit DP against V - 1, O(l^2).
    ``xp``: the array module (numpy for concrete checks inside a trace)."""
    b, l = self.base, self.num_digits
    top = [(self.vocab_size - 1) // b ** (l - 1 - k) % b for k in range(l)]  # digits of V-1
    d = xp.asarray(d)
    revealed = xp.broadcast_to(xp.asarray(revealed, bool), d.shape)
    total = xp.zeros(d.shape[:-1], xp.float32)
    prefix_ok = xp.ones(d.shape[:-1], bool)  # digits before j can equal V-1's
    for j in range(l):
      free_after = xp.sum(~revealed[..., j + 1:], axis=-1).astype(xp.float32)
      options = xp.where(revealed[..., j], (d[..., j] < top[j]).astype(xp.float32),
                         float(top[j]))
      total = total + prefix_ok * options * xp.power(float(b), free_after)
      prefix_ok = prefix_ok & (~revealed[..., j] | (d[..., j] == top[j]))
    return total + prefix_ok  # + the token V - 1 itself


def check_digits(x, code: DigitCode, *, name: str = "x_init"):
  """Checks int digits [..., l]: each in [0, b] (b the digit mask) and every
  position's revealed digits agreeing with at least one token < V (so a fully
  given position codes a token < V).

  Concrete arrays: ``ValueError`` naming ``name``, the value and its position.
  Traced arrays: a ``checkify`` check under ``forward.checked``, else nothing
  (as ``forward.check_tokens``).
  """
  b, l = code.base, code.num_digits
  if x.shape[-1] != l:
    raise ValueError(f"{name} must hold {l} digits per token (last axis), got shape {x.shape}")
  xp = jnp
  if not forward.is_traced(x):
    x, xp = np.asarray(x), np
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must hold integer digits, got dtype {x.dtype}")
  forward.check_entries((x < 0) | (x > b), f"{name} holds digit {{value}} at {{where}}, "
                        f"outside [0, {b}] (base b = {b}, digit mask id {b})", value=x)
  forward.check_entries(code.count_consistent(x, x != b, xp=xp) < 1,
                        f"{name} position {{where}} has digits {{digits}} (mask {b}), which "
                        f"code no token < V = {code.vocab_size}", digits=x)
