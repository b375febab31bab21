"""The training loop: one jitted step over a device mesh, EMA, checkpoints, metrics.

``train_and_evaluate(config, workdir)`` builds the dataset and model from the
config, resumes from the latest checkpoint in ``workdir`` if there is one,
trains, fits the learned prior if asked, evaluates, and writes ``eval.json``.
Batches are a pure function of (seed, step), so a resumed run sees the data an
uninterrupted run sees.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vmd_jax.networks import MaskedDiffusion
from vmd_jax.trainer import (build, checkpoint, config as config_lib, evaluate, guard, io, load,
                             lock, preemption)
from vmd_jax.trainer.state import TrainState, ema_update, init_state, make_optimizer


def make_mesh(devices=None) -> Mesh:
  """A 1-D data-parallel mesh over ``devices`` (default: every device of every process)."""
  return Mesh(np.array(jax.devices() if devices is None else devices), ("data",))


def make_train_step(model: MaskedDiffusion, tx, seed: int, ema_decay: float):
  """(state, x0) -> (state, metrics): one optimizer step; metrics are batch means."""
  base_key = jax.random.key(seed)

  def train_step(state: TrainState, x0):
    key = jax.random.fold_in(base_key, state.step)

    def loss_fn(params):
      terms = model.loss(params, x0, key, train=True)
      return jnp.mean(terms["loss"]), terms

    (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = ema_update(state.ema_params, params, state.step, ema_decay)
    # Per-sequence terms [B] only (not t, x_t or per-token / per-block shares).
    metrics = {k: jnp.mean(v) for k, v in terms.items() if k != "t" and v.ndim == 1}
    metrics["grad_norm"] = optax.tree.norm(grads)
    metrics.update(model.schedule_metrics(params))  # GenMD4's exponents; {} otherwise
    return TrainState(state.step + 1, params, opt_state, ema), metrics

  return train_step


def shard_batch(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """Puts this process's rows of a global numpy batch onto the mesh."""
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  rows = x.shape[0] // jax.process_count()
  local = x[jax.process_index() * rows:(jax.process_index() + 1) * rows]
  return jax.make_array_from_process_local_data(sharding, local, x.shape)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if possible); returns eval metrics.

  Faults (README "What survives what"): the workdir is locked for the run
  (``lock.WorkdirLocked``); a non-finite loss or gradient norm stops it unsaved
  (``guard.TrainingDiverged``); SIGTERM / SIGINT save the current step and stop
  (``preemption.RunStopped``); an unreadable newest checkpoint is moved aside and
  the one before it resumed.
  """
  config_lib.validate(config)
  workdir = io.as_path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with lock.WorkdirLock(workdir):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir) -> dict:
  tc = config.train
  n_dev = jax.device_count()
  if tc.batch_size % n_dev:
    raise ValueError(f"config.train.batch_size = {tc.batch_size} is not divisible by the "
                     f"{n_dev} devices")
  if jax.process_index() == 0:
    io.write_json(workdir / "config.json", config.to_dict())

  dataset = build.build_dataset(config)
  model = build.build_model(config, dataset.vocab_size, dataset.seq_len)
  evaluate.check_settings(config, model, dataset.seq_len)
  if jax.process_index() == 0:
    load.write_data_shape(workdir, dataset.vocab_size, dataset.seq_len)
  tx = make_optimizer(tc)
  mesh = make_mesh()
  replicated = NamedSharding(mesh, P())
  data_sharding = NamedSharding(mesh, P("data"))

  example = np.zeros((n_dev, dataset.seq_len), np.int32)
  state = jax.jit(lambda k: init_state(model, tx, k, example), out_shardings=replicated)(
      jax.random.key(config.seed))
  step_fn = jax.jit(guard.guard_step(make_train_step(model, tx, config.seed, tc.ema_decay)),
                    in_shardings=(replicated, data_sharding, replicated),
                    out_shardings=(replicated, replicated, replicated), donate_argnums=(0,))
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints",
                                 keep=tc.keep_checkpoints, every=tc.checkpoint_every)
  writer = metric_writers.create_default_writer(str(workdir),
                                                just_logging=jax.process_index() > 0)
  try:  # however this ends, the last save completes and the metrics reach the disk
    state = _resume(ckpt, state)
    start = int(state.step)
    if start == 0:
      writer.write_hparams(_flatten(config.to_dict()))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Training %s on %s: %d parameters, %d devices, steps %d..%d",
                 config.model.kind, config.data.name, n_params, n_dev, start, tc.num_steps)
    state_box = [state]
    with preemption.StopSignals(ckpt.reached_preemption) as stop:
      _train_loop(state_box, start, step_fn, dataset, data_sharding, tc, writer, ckpt, stop)
    result = evaluate.evaluate_run(config, model, dataset, state_box[0].ema_params, workdir,
                                   writer)
  finally:
    ckpt.close()
    writer.close()
  return result


def _resume(ckpt, state):
  """The newest intact checkpoint's state, or ``state`` (a fresh run)."""
  restored = ckpt.restore_newest_intact(state)
  if restored is None:
    logging.info("No checkpoint in %s: starting at step 0", ckpt.directory)
    return state
  logging.info("Resuming from step %d (checkpoint %s/%d)", int(restored.step),
               ckpt.directory, int(restored.step))
  return restored


def _train_loop(state_box, start, step_fn, dataset, data_sharding, tc, writer, ckpt, stop):
  """Steps ``start..num_steps``; the current state lives in ``state_box[0]``.

  Each step's ``ok`` (guard.py) is read after the next step is dispatched, and at
  once before a save or a stop; SIGTERM / SIGINT (``stop``) save the step just
  done and raise ``preemption.RunStopped``.
  """
  sums, count, t_last, step_last = None, 0, time.time(), start
  ok = jax.device_put(np.bool_(True), state_box[0].step.sharding)
  pending = None  # (step, ok, metrics) of the step before, not yet checked

  def check(done, ok, metrics):
    if not bool(ok):
      ckpt.wait()
      latest = ckpt.latest_step()
      raise guard.TrainingDiverged(guard.diverged_message(
          done, jax.device_get(metrics),
          None if latest is None else f"{ckpt.directory}/{latest}"))

  for step in range(start, tc.num_steps):
    x0 = shard_batch(dataset.train_batch(step, tc.batch_size)["x0"], data_sharding)
    state_box[0], metrics, ok = step_fn(state_box[0], x0, ok)
    done = step + 1
    if pending is not None:
      check(*pending)
    pending = (done, ok, metrics)
    sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
    count += 1
    if done % tc.log_every == 0 or done == tc.num_steps:
      check(*pending)
      scalars = {k: float(v) / count for k, v in jax.device_get(sums).items()}
      now = time.time()
      steps_per_s = (done - step_last) / max(now - t_last, 1e-9)
      scalars["steps_per_sec"] = steps_per_s
      scalars["tokens_per_sec"] = steps_per_s * tc.batch_size * dataset.seq_len
      writer.write_scalars(done, scalars)
      eta = (tc.num_steps - done) / max(steps_per_s, 1e-9)
      logging.info("step %d/%d  loss %.4f  %.1f steps/s  ETA %.0fs", done, tc.num_steps,
                   scalars["loss"], steps_per_s, eta)
      sums, count, t_last, step_last = None, 0, now, done
    stopping = stop.requested(done)
    if stopping or done % tc.checkpoint_every == 0 or done == tc.num_steps:
      check(*pending)  # never save a non-finite state
      ckpt.save(done, state_box[0], force=True)
    if stopping:
      ckpt.wait()
      writer.flush()
      raise stop.stopped(done, tc.num_steps, f"{ckpt.directory}/{done}")
  if tc.num_steps > start:
    logging.info("Trained steps %d..%d", start, tc.num_steps)


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out
