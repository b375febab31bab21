"""MD4's objective (Shi et al. 2024, arXiv:2406.04329): the masked-diffusion NELBO.

Pure JAX: a function of arrays, a PRNG key and a ``denoise_fn`` callable; no
Flax, no config. Values are per sequence, in nats, shape [B]. The NELBO, its
boundary terms and its discrete-time form are in ``vmd_jax.losses``' module
docstring; ``losses.nelbo_from_logits`` computes them from one draw of x_t.
The other objectives have the same shape: ``prime.nelbo_terms``,
``genmd4.nelbo_terms``, ``block.block_nelbo_terms``.
"""

from __future__ import annotations

import chex
import jax

from vmd_jax.forward import check_tokens, infer_vocab_size, mask_tokens
from vmd_jax.losses import DenoiseFn, diffusion_weight, draw_times, nelbo_from_logits


def nelbo_terms(denoise_fn: DenoiseFn, x0, key, schedule, *,
                vocab_size: int | None = None, t=None, noise=None, z=None,
                num_steps: int | None = None, antithetic: bool = True):
  """MD4's NELBO and its terms, one Monte Carlo sample of t per sequence.

  Args:
    denoise_fn: ``(x_t int [B, N], t float [B]) -> logits [B, N, V]``, or with
      ``z`` ``(x_t, t, z) -> logits``.
    x0: int [B, N] clean tokens in [0, V) (checked here: an entry point).
    key: PRNG key for t (unless given) and the masking noise (unless given).
    schedule: a ``vmd_jax.schedules.Schedule``.
    vocab_size: V; inferred from the logits' shape when None.
    t: optional float [B] times in [0, 1].
    noise: optional float [B, N] masking uniforms (see ``forward.mask_tokens``).
    z: optional latent (VMD, ``losses.vmd_terms``): float [B, D], or a function
      ``(x_t, t) -> z`` for an encoder that sees x_t, called once x_t is drawn.
    num_steps: None for continuous time, else T for the T-step discrete NELBO.
    antithetic: draw t stratified over the batch (``losses.stratified_times``).

  Returns:
    dict of float32 [B] in nats: ``diffusion``, ``reconstruction``, ``prior`` and
    ``nelbo`` (their sum); ``per_token`` [B, N], each token's share (its weighted
    cross-entropy plus 1/N of the boundary terms; sums to ``nelbo``), for
    token-weighted averages such as bits per character over padded windows;
    ``t`` is the time of x_t (on the T-step grid in discrete time), ``xt`` [B, N].
  """
  chex.assert_rank(x0, 2)
  key, t = draw_times(key, x0.shape[0], t, antithetic)
  if vocab_size is None:
    probe = () if z is None else ((jax.eval_shape(z, x0, t) if callable(z) else z),)
    vocab_size = infer_vocab_size(denoise_fn, x0, t, *probe)
  check_tokens(x0, vocab_size, name="x0")
  t, weight = diffusion_weight(schedule, t, num_steps)
  xt = mask_tokens(x0, t, schedule, vocab_size, key=key, noise=noise)
  if callable(z):
    z = z(xt, t)
  logits = denoise_fn(xt, t) if z is None else denoise_fn(xt, t, z)
  return {**nelbo_from_logits(logits, x0, xt, weight, schedule, vocab_size), "t": t, "xt": xt}


def nelbo(denoise_fn: DenoiseFn, x0, key, schedule, **kwargs):
  """Per-sequence MD4 NELBO in nats, float32 [B]; see ``nelbo_terms``.

  ``md4.nelbo(denoise_fn, x0, key, get_schedule("linear"))`` with
  ``denoise_fn(xt, t) -> logits [B, N, V]`` and ``x0`` int [B, N] in [0, V).
  """
  return nelbo_terms(denoise_fn, x0, key, schedule, **kwargs)["nelbo"]
