"""Which model variants compose: every compatibility rule in one place.

A ``MaskedDiffusion`` is MD4, VMD (an encoder), GenMD4 (learned per-token
exponents), block diffusion (``block_size``), MDM-Prime (``prime_digits``) or a
composition of them. ``Variant`` holds the fields the rules read, with one
"off" value each: ``block_size = 0`` (one block), ``prime_digits = 1`` (tokens),
``loss_steps = 0`` (continuous time); ``check_variant`` raises ValueError for a
composition that is not implemented or not a bound, naming the config fields
(``config.diffusion.*``, ``config.model.*``, ``config.prior.kind``), the words
both the config and the model's fields are set in. It is called by config
validation (``trainer.config.validate``, with the run's sampling settings), by
``MaskedDiffusion`` on construction, and by ``vmd-jax evaluate`` / ``sample``
with the data's length and the orders and NFE they will sample with.
"""

from __future__ import annotations

import dataclasses

from vmd_jax import block, prime

PRIOR_KINDS = ("standard_normal", "mixture", "conditional")
OFF = 0  # block_size and loss_steps: one block, continuous time


@dataclasses.dataclass(frozen=True)
class Variant:
  """The fields of a model that decide which variant it is."""

  latent: bool = False                 # VMD: an encoder q(z | x_0 [, x_t])
  encoder_sees_xt: bool = False
  encoder_pooling: str = "mean"
  latent_mode: str = "adaln"
  genmd4: bool = False                 # learned per-token exponents ...
  schedule: str = "polynomial"         # ... starting from this schedule
  block_size: int = OFF                # 0: one block
  train_mask_rate: tuple[float, float] = (0.0, 1.0)
  prime_digits: int = 1                # 1: the denoiser reads tokens
  loss_steps: int = OFF                # 0: continuous-time NELBO
  prior: str = "standard_normal"       # one of PRIOR_KINDS
  vocab_size: int = 0                  # 0: not known yet (a config)


def _check_genmd4(v: Variant, orders, source: str) -> None:
  """GenMD4 is implemented for MD4 with the continuous-time NELBO and the
  ancestral sampler only (``vmd_jax.genmd4``)."""
  needs = "config.diffusion.kind = 'genmd4' needs"
  if v.schedule not in ("linear", "polynomial"):
    raise ValueError(f"GenMD4's learned exponents start from a 'linear' or 'polynomial' "
                     f"schedule, got {v.schedule!r}")
  if v.latent:
    raise ValueError(f"{needs} config.model.kind = 'md4', got 'vmd'")
  if v.block_size:
    raise ValueError(f"{needs} config.diffusion.block_size = 0, got {v.block_size!r}")
  if v.prime_digits > 1:
    raise ValueError(f"{needs} config.diffusion.prime_digits = 1, got {v.prime_digits!r}")
  if v.loss_steps:
    raise ValueError(f"{needs} config.diffusion.loss_steps = 0 (the continuous-time "
                     f"NELBO), got {v.loss_steps!r}")
  for order, nfe in orders:
    if order != "ancestral":
      raise ValueError(f"{needs} the 'ancestral' order only, got '{order}:{nfe}' in "
                       f"{source} (vmd_jax.genmd4 samples ancestrally)")


def _check_blocks(v: Variant) -> None:
  if (tuple(v.train_mask_rate) != (0.0, 1.0)) and not v.block_size:
    raise ValueError("config.diffusion.train_mask_rate_min/max need "
                     "config.diffusion.block_size > 0")
  if v.block_size and v.latent:
    if v.latent_mode == "prefix":
      raise ValueError("config.model.latent_mode = 'prefix' is not supported with "
                       "config.diffusion.block_size > 0 (use 'adaln' or 'add')")
    if v.encoder_sees_xt or v.encoder_pooling != "mean":
      raise ValueError("block VMD (config.diffusion.block_size > 0) needs "
                       "config.model.encoder_sees_xt = False and encoder_pooling = 'mean'")


def _check_prime(v: Variant) -> None:
  """MDM-Prime works with MD4, VMD and blocks; a VMD encoder must see x_0 alone
  (Prime's x_t is digits, and only then a bound); the block sampler's KV cache
  packs digits."""
  if v.prime_digits > 1 and v.latent and v.encoder_sees_xt:
    raise ValueError("config.diffusion.prime_digits > 1 needs config.model.encoder_sees_xt "
                     "= False (the encoder sees x_0 alone)")
  if v.prime_digits > 1 and v.block_size and v.vocab_size:
    prime.DigitCode(v.vocab_size, v.prime_digits).check_packable()


def _check_prior(v: Variant) -> None:
  if v.prior not in PRIOR_KINDS:
    raise ValueError(f"config.prior.kind = {v.prior!r}; accepted values: {list(PRIOR_KINDS)}")
  if v.prior != "standard_normal" and not v.latent:
    raise ValueError(f"config.prior.kind = {v.prior!r} needs config.model.kind = 'vmd'")
  if v.prior == "conditional" and (not v.block_size or v.prime_digits > 1):
    raise ValueError("config.prior.kind = 'conditional' (p(z_b | x^{<b})) needs block VMD: "
                     "config.diffusion.block_size > 0 and prime_digits = 1")


def _check_sampling(v: Variant, seq_len: int, orders, source: str) -> None:
  """``block_size`` divides the length, and with K blocks every NFE is a
  multiple of K (each block gets NFE / K steps)."""
  blocks = block.num_blocks(seq_len, v.block_size) if v.block_size else 1
  for order, nfe in orders:
    if nfe % blocks:
      raise ValueError(f"{source} {order}:{nfe}: NFE {nfe} is not a multiple of "
                       f"the {blocks} blocks (each block gets NFE / {blocks} steps)")


def check_variant(v: Variant, *, seq_len: int | None = None, orders=(),
                  source: str = "config.eval.settings") -> None:
  """Raises ValueError naming the fields of the first rule ``v`` breaks.

  ``seq_len``: the data's length N, when known (``block_size`` must divide it);
  ``orders``: the (order, NFE) pairs the model will sample with, checked
  against the variant (GenMD4: ancestral only; K blocks: NFE a multiple of K,
  with ``seq_len``); ``source``: where the
  orders come from, for the message (a flag, or the run's ``eval.settings``).
  """
  orders = list(orders)
  if v.genmd4:
    _check_genmd4(v, orders, source)
  _check_blocks(v)
  _check_prime(v)
  _check_prior(v)
  if seq_len is not None:
    _check_sampling(v, seq_len, orders, source)
