"""The forward (masking) process of masked diffusion and its token conventions.

q(x_t^n | x_0^n) = alpha(t) [x_t^n = x_0^n] + (1 - alpha(t)) [x_t^n = m],
independently for every position n, where the mask id m is the vocabulary size V
(tokens are 0..V-1). A position is masked when its uniform noise u^n satisfies
u^n >= alpha(t), so the caller can pass the noise explicitly and get an exact,
reproducible x_t.

Token checks. Every entry point of the library (``md4.nelbo``, ``vmd_loss``,
``block_nelbo``, ``block_vmd_loss``, ``sample``, ``block_sample``, the Prime and
GenMD4 functions) calls ``check_tokens`` on its token arguments once; the functions
they call assume checked tokens (their docstrings say so). On concrete
arrays (no ``jax.jit``) a bad token raises ``ValueError`` naming the argument, the
value and its position. Inside ``jax.jit`` values cannot be inspected; wrap the
function with ``checked`` to get the same error from compiled code:

>>> import jax, jax.numpy as jnp
>>> from vmd_jax import forward
>>> def f(x):
...   forward.check_tokens(x, 4, name="x0")
...   return x + 1
>>> err, _ = jax.jit(forward.checked(f))(jnp.array([[0, 1, 5]]))
>>> print(err.get().splitlines()[0])
x0 holds token 5 at (0, 2), outside [0, 3] (V = 4) (`check` failed)
"""

from __future__ import annotations

import contextvars
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

_CHECKING = contextvars.ContextVar("vmd_jax_token_checks", default=False)


def _allowed(vocab_size: int, allow_mask: bool) -> str:
  if allow_mask:
    return f"[0, {vocab_size}] (V = {vocab_size}, mask id {vocab_size})"
  return f"[0, {vocab_size - 1}] (V = {vocab_size})"


def is_traced(value) -> bool:
  """Whether ``value`` is a tracer (a ``jax.jit`` argument, a ``vmap``ped value):
  its values cannot be inspected, only checked under ``checked``."""
  return isinstance(value, jax.core.Tracer)


def check_tokens(x, vocab_size: int, *, allow_mask: bool = False, name: str = "x"):
  """Checks that integer tokens lie in [0, V) (or [0, V] with ``allow_mask``).

  Concrete arrays: raises ``ValueError`` naming ``name``, the first bad value and
  its index. Traced arrays (inside ``jax.jit``): a ``checkify`` check when the
  caller is wrapped by ``checked``, else nothing (values cannot be inspected).
  """
  hi = vocab_size if allow_mask else vocab_size - 1
  if not is_traced(x):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must hold integer tokens, got dtype {x.dtype}")
  check_entries((x < 0) | (x > hi),
                f"{name} holds token {{value}} at {{where}}, outside "
                f"{_allowed(vocab_size, allow_mask)}", value=x)


def check_entries(bad, message: str, **values):
  """Checks that no entry of the bool array ``bad`` is set: the one checkify
  pattern behind every value check (``check_tokens``, ``digits.check_digits``).

  ``message`` names the first bad entry: ``{where}`` is its index, and each
  ``{name}`` of ``values`` (arrays of ``bad``'s shape, or of ``bad.shape + (k,)``
  for a list per entry) its value there. Concrete: ``ValueError``. Traced: a
  ``checkify`` check under ``checked``, else nothing (values cannot be inspected).
  """
  if is_traced(bad) or any(is_traced(v) for v in values.values()):
    if not checking():
      return
    flat = jnp.argmax(bad.ravel())
    index = jnp.unravel_index(flat, bad.shape)
    args = {f"i{k}": i for k, i in enumerate(index)}
    fields = {"where": "(" + ", ".join("{i%d}" % k for k in range(bad.ndim)) + ")"}
    for field, value in values.items():
      entry = jnp.asarray(value).reshape((bad.size,) + jnp.shape(value)[bad.ndim:])[flat]
      if entry.ndim == 0:
        args[field], fields[field] = entry, "{%s}" % field
      else:
        args.update({f"{field}{k}": entry[k] for k in range(entry.shape[0])})
        fields[field] = "[" + ", ".join("{%s%d}" % (field, k) for k in range(entry.shape[0])) + "]"
    checkify.check(~jnp.any(bad), message.format(**fields), **args)
    return
  bad = np.asarray(bad)
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    entries = {field: np.asarray(value)[index] for field, value in values.items()}
    raise ValueError(message.format(where=index, **{
        field: int(e) if e.ndim == 0 else e.tolist() for field, e in entries.items()}))


def check_times(t, name: str = "t"):
  """``t`` as float32 when every time is finite and in [0, 1]; else ``ValueError``
  naming the first bad one and where (NaN and times outside [0, 1] would give a
  finite, meaningless NELBO). The one check of every caller-given time (the
  losses' ``t``). Traced: a ``checkify`` check under ``checked``, else nothing."""
  t = jnp.asarray(t, jnp.float32)
  if is_traced(t):
    if checking():
      bad = ~((t >= 0.0) & (t <= 1.0)).ravel()
      flat = jnp.argmax(bad)
      checkify.check(~jnp.any(bad), f"{name} holds {{v}} at flat index {{i}}; times must be "
                     "finite and in [0, 1]", v=t.ravel()[flat], i=flat)
    return t
  values = np.asarray(t)
  bad = ~((values >= 0.0) & (values <= 1.0))
  if bad.any():
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    raise ValueError(f"{name} holds {float(values[index])} at {index}; times must be finite "
                     "and in [0, 1]")
  return t


def check_drawable(ok, name: str = "denoise_fn"):
  """Raises ``ValueError`` unless ``ok``: a sampler's flag that every logit it drew
  a masked position from was usable (no NaN or +inf, not all -inf). A sampler never
  returns a mask id or turns NaN into token 0. Traced: a ``checkify`` check under
  ``checked``, else nothing."""
  message = (f"{name} returned NaN or +inf logits (or only -inf) at a masked position: no "
             "token can be drawn there")
  if is_traced(ok):
    if checking():
      checkify.check(ok, message)
    return
  if not bool(ok):
    raise ValueError(message)


def drawable(logits, masked):
  """bool scalar: the logits [..., V] of every ``masked`` position [...] hold no
  NaN or +inf and at least one value above -inf (``check_drawable``)."""
  good = (jnp.all(~jnp.isnan(logits) & (logits < jnp.inf), axis=-1)
          & jnp.any(logits > -jnp.inf, axis=-1))
  return jnp.all(good | ~masked)


def checking() -> bool:
  """Whether traced values are being checked: inside a ``checked`` call."""
  return _CHECKING.get()


def checked(fn):
  """``checkify``-wrapped ``fn`` whose token checks (and the samplers' temperature
  and top_p checks) also run under ``jax.jit``.

  ``err, out = jax.jit(checked(fn))(*args)``; ``err.throw()`` raises the check's
  message (``checkify.JaxRuntimeError``), ``err.get()`` returns it or None.
  """
  @functools.wraps(fn)
  def with_checks(*args, **kwargs):
    token = _CHECKING.set(True)
    try:
      return fn(*args, **kwargs)
    finally:
      _CHECKING.reset(token)
  return checkify.checkify(with_checks, errors=checkify.user_checks)


def infer_vocab_size(denoise_fn, *args, **kwargs) -> int:
  """V, the last axis of ``denoise_fn(*args, **kwargs)``'s logits (no compute)."""
  return jax.eval_shape(functools.partial(denoise_fn, **kwargs), *args).shape[-1]


def check_logits(logits, shape, *, name: str = "denoise_fn", axes: str = "[B, N, V]"):
  """``logits``, unchanged, when ``logits.shape`` is ``shape`` (None: any size on
  that axis); else a ``ValueError`` naming both. Shapes are static, so this works
  under ``jax.jit``."""
  if logits.ndim == len(shape) and all(e is None or a == e
                                       for a, e in zip(logits.shape, shape)):
    return logits
  expected = "(" + ", ".join("?" if e is None else str(e) for e in shape) + ")"
  raise ValueError(f"{name} returned logits of shape {tuple(logits.shape)}, expected "
                   f"{axes} = {expected}")


def mask_tokens(x0, t, schedule, mask_id: int, *, key=None, noise=None):
  """Draws x_t ~ q(x_t | x_0): position n is masked iff noise[b, n] >= alpha(t_b).

  Args:
    x0: int [B, N] clean tokens in [0, mask_id), checked by the caller (the
      objective, an entry point).
    t: float [B] times in [0, 1].
    schedule: a ``Schedule``.
    mask_id: the mask token id (the vocabulary size V).
    key: PRNG key, used when ``noise`` is None.
    noise: optional float [B, N] uniforms in [0, 1).

  Returns:
    int [B, N] x_t, x0's dtype, or int32 when that dtype cannot hold mask_id
    (uint8 bytes with V = 256).
  """
  chex.assert_rank(x0, 2)
  chex.assert_shape(t, (x0.shape[0],))
  return mask_where(x0, schedule.alpha(t)[:, None], mask_id, key=key, noise=noise)


def mask_where(x0, keep, mask_id: int, *, key=None, noise=None):
  """x_t[i] = mask_id if noise[i] >= keep[i] else x0[i]: a draw of the forward
  process given each entry's probability ``keep`` of staying unmasked (broadcast
  to x0's shape), with ``noise`` ~ U[0, 1) drawn from ``key`` when not given.
  Every forward process here (MD4, GenMD4, Prime's digits) is this step.
  x_t has x0's dtype, promoted to int32 where that dtype cannot hold mask_id."""
  if noise is None:
    if key is None:
      raise ValueError("masking needs a key or explicit noise")
    noise = jax.random.uniform(key, x0.shape)
  chex.assert_equal_shape([noise, x0])
  x0 = jnp.asarray(x0)
  if mask_id > jnp.iinfo(x0.dtype).max:
    x0 = x0.astype(jnp.int32)
  return jnp.where(noise >= keep, jnp.asarray(mask_id, x0.dtype), x0)
