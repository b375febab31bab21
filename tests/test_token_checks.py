"""Every library entry point rejects tokens outside the vocabulary, naming the
argument, the value and where; under jit, ``forward.checked`` raises the same."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from vmd_jax import block, forward, losses, md4, sampling
from vmd_jax.schedules import get_schedule

V, N = 4, 6
SCHEDULE = get_schedule("linear")


def denoise(x, t, z=None):
  return jnp.zeros(x.shape + (V,))


def encode(x0, xt=None, t=None):
  return jnp.zeros((x0.shape[0], 2)), jnp.zeros((x0.shape[0], 2))


def block_denoise(x, t, positions, mask, kv=None, *, z=None):
  return jnp.zeros(x.shape + (V,))


def block_encode(x0):
  return jnp.zeros((x0.shape[0], N // 2, 2)), jnp.zeros((x0.shape[0], N // 2, 2))


KEY = jax.random.key(0)
LOSSES = {
    "md4_nelbo": lambda x: md4.nelbo(denoise, x, KEY, SCHEDULE),
    "vmd_loss": lambda x: losses.vmd_loss(denoise, encode, x, KEY, SCHEDULE)["loss"],
    "block_nelbo": lambda x: block.block_nelbo(block_denoise, x, KEY, SCHEDULE, 2),
    "block_vmd_loss": lambda x: block.block_vmd_loss(block_denoise, block_encode, x, KEY,
                                                     SCHEDULE, 2)["loss"],
}
SAMPLERS = {
    "sample": lambda x: sampling.sample(denoise, KEY, x, 3, SCHEDULE),
    "block_sample": lambda x: block.block_sample(block_denoise, None, KEY, x, 2, 1, SCHEDULE,
                                                 use_cache=False),
}


def _with(value, index=(1, 4), fill=0):
  x = np.full((2, N), fill, np.int32)
  x[index] = value
  return jnp.asarray(x)


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("value", [V, V + 3, -1])
def test_losses_reject_tokens_outside_the_vocabulary(name, value):
  with pytest.raises(ValueError, match=rf"x0 holds token {value} at \(1, 4\), outside \[0, 3\]"):
    LOSSES[name](_with(value))
  assert np.all(np.isfinite(LOSSES[name](_with(2))))  # in range: fine


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("value", [V + 1, -2])
def test_samplers_reject_bad_initial_tokens(name, value):
  with pytest.raises(ValueError, match=rf"x_init holds token {value} at \(1, 4\), outside "
                                       rf"\[0, 4\] \(V = 4, mask id 4\)"):
    SAMPLERS[name](_with(value, fill=V))
  x = SAMPLERS[name](_with(1, fill=V))  # masks and a prompt token: fine
  assert int(x.max()) < V and int(x[1, 4]) == 1


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_checked_mode_raises_the_same_error_under_jit(name):
  fn = jax.jit(forward.checked(LOSSES[name]))
  err, _ = fn(_with(V))
  with pytest.raises(checkify.JaxRuntimeError, match=r"x0 holds token 4 at \(1, 4\)"):
    err.throw()
  err, out = fn(_with(3))
  assert err.get() is None and np.all(np.isfinite(out))


def test_checked_sampler_under_jit():
  err, _ = jax.jit(forward.checked(SAMPLERS["sample"]))(_with(7, index=(0, 2), fill=V))
  assert "x_init holds token 7 at (0, 2)" in err.get()


def test_check_tokens_rejects_float_tokens():
  with pytest.raises(ValueError, match="x0 must hold integer tokens, got dtype float32"):
    forward.check_tokens(np.zeros((1, 2), np.float32), V, name="x0")


@pytest.mark.parametrize("sampler", ["sample", "block_sample"])
def test_checked_samplers_check_a_traced_temperature_and_top_p(sampler):
  """Traced (a jit argument) a negative or NaN temperature, or a top_p outside
  (0, 1], cannot raise; under ``forward.checked`` it is a checkify error naming
  it, as a concrete one is a ValueError. Good values pass."""
  draw = {"sample": lambda x, temp, top_p: sampling.sample(
              denoise, KEY, x, 3, SCHEDULE, temperature=temp, top_p=top_p),
          "block_sample": lambda x, temp, top_p: block.block_sample(
              block_denoise, None, KEY, x, 2, 1, SCHEDULE, use_cache=False,
              temperature=temp, top_p=top_p)}[sampler]
  fn = jax.jit(forward.checked(draw))
  x = _with(1, fill=V)
  for temp, top_p, message in [(-1.0, 0.5, "temperature must be a finite number >= 0"),
                               (jnp.nan, 0.5, "temperature must be a finite number >= 0"),
                               (1.0, 0.0, r"top_p must be in \(0, 1\]"),
                               (1.0, 1.5, r"top_p must be in \(0, 1\]")]:
    err, _ = fn(x, temp, top_p)
    with pytest.raises(checkify.JaxRuntimeError, match=message):
      err.throw()
    with pytest.raises(ValueError, match=message):
      draw(x, temp, top_p)
  for temp in (0.0, 1.0):
    err, out = fn(x, temp, 1.0)
    assert err.get() is None and int(out.max()) < V and int(out[1, 4]) == 1


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("t", [1.5, -0.1, np.nan])
def test_losses_reject_times_outside_zero_one(name, t):
  """A given t outside [0, 1] or NaN is an error naming it, not a finite NELBO;
  under jit, ``forward.checked`` raises the same."""
  loss = {"md4_nelbo": lambda x, t: md4.nelbo(denoise, x, KEY, SCHEDULE, t=t),
          "vmd_loss": lambda x, t: losses.vmd_loss(denoise, encode, x, KEY, SCHEDULE,
                                                   t=t)["loss"],
          "block_nelbo": lambda x, t: block.block_nelbo(block_denoise, x, KEY, SCHEDULE, 2,
                                                        t=jnp.tile(t[:, None], (1, N // 2))),
          "block_vmd_loss": lambda x, t: block.block_vmd_loss(
              block_denoise, block_encode, x, KEY, SCHEDULE, 2,
              t=jnp.tile(t[:, None], (1, N // 2)))["loss"]}[name]
  times = jnp.array([0.5, t], jnp.float32)
  with pytest.raises(ValueError, match=r"t holds (nan|1\.5|-0\.1).* at \(1,( 0)?\); times "
                                       r"must be finite and in \[0, 1\]"):
    loss(_with(2), times)
  err, _ = jax.jit(forward.checked(loss))(_with(2), times)
  with pytest.raises(checkify.JaxRuntimeError, match=r"times must be finite and in \[0, 1\]"):
    err.throw()
  assert np.all(np.isfinite(loss(_with(2), jnp.array([0.5, 1.0]))))  # in range: fine


def nan_denoise(x, t, z=None):
  return jnp.full(x.shape + (V,), jnp.nan)


@pytest.mark.parametrize("order", ["ancestral", "top_prob"])
def test_sample_refuses_nan_logits_instead_of_returning_token_0_or_masks(order):
  """NaN logits: a ``ValueError`` naming the denoiser (it used to give all-zero
  tokens, or mask ids with top_prob); under jit, ``forward.checked`` says the same."""
  x = _with(1, fill=V)
  draw = lambda x: sampling.sample(nan_denoise, KEY, x, 3, SCHEDULE, order)
  with pytest.raises(ValueError, match=r"denoise_fn returned NaN or \+inf logits .*at a "
                                       "masked position"):
    draw(x)
  err, _ = jax.jit(forward.checked(draw))(x)
  with pytest.raises(checkify.JaxRuntimeError, match=r"denoise_fn returned NaN"):
    err.throw()
  minus_inf_but_one = lambda x, t: jnp.full(x.shape + (V,), -jnp.inf).at[..., 2].set(0.0)
  out = sampling.sample(minus_inf_but_one, KEY, x, 3, SCHEDULE, order)
  assert np.all(np.asarray(out)[x != V] == 1) and np.all(np.asarray(out)[x == V] == 2)


def test_sample_refuses_a_length_of_zero_and_more_steps_than_its_limit():
  with pytest.raises(ValueError, match=r"x_init has shape \(2, 0\): sequences of length 0"):
    sampling.sample(denoise, KEY, jnp.zeros((2, 0), jnp.int32), 3, SCHEDULE)
  for order in ("ancestral", "top_prob"):  # refused before any plan is made
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 65536\] "
                                         r"\(schedules.MAX_SAMPLING_STEPS\), got 1000000000"):
      sampling.sample(denoise, KEY, _with(V, fill=V), 10**9, SCHEDULE, order)


def test_bits_per_token_refuses_zero_tokens():
  with pytest.raises(ValueError, match="num_tokens must be >= 1"):
    losses.bits_per_token(1.0, 0)
  assert losses.bits_per_token(np.log(2.0) * 3, 3) == pytest.approx(1.0)
