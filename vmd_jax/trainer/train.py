"""The training loop: one jitted step over a device mesh, EMA, checkpoints, metrics.

``train_and_evaluate(config, workdir)`` builds the dataset and model from the
config, resumes from the latest checkpoint in ``workdir`` if there is one,
trains, fits the learned prior if asked, evaluates, and writes ``eval.json``.
Batches are a pure function of (seed, step), so a resumed run sees the data an
uninterrupted run sees. The mesh, the state's layout (data parallel x FSDP) and
the batch feeding (each process builds only its rows) are ``sharding``'s; the
MFU log is ``mfu``'s.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from vmd_jax.networks import MaskedDiffusion
from vmd_jax.trainer import (build, checkpoint, config as config_lib, evaluate, guard, io, load,
                             lock, mfu, preemption, sharding, summaries)
from vmd_jax.trainer.state import TrainState, ema_update, init_state, make_optimizer
from vmd_jax.trainer.state import learning_rate as learning_rate_of


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


def train_batch(dataset, step: int, batch_size: int, data_sharding) -> jax.Array:
  """x0 [batch_size, N] of ``step`` on the mesh; this process builds only its rows."""
  make_rows = lambda rows: {"x0": dataset.train_batch(step, batch_size, rows=rows)["x0"]}
  return sharding.global_batch(make_rows, batch_size, data_sharding)["x0"]


def abstract_state(model, tx, seed: int, seq_len: int, mesh, min_size: int):
  """A fresh ``TrainState``'s shapes, dtypes and ``sharding.tree_shardings`` layout,
  computing nothing: (state of ``jax.ShapeDtypeStruct`` leaves with their
  shardings, shardings)."""
  shapes = jax.eval_shape(_init_fn(model, tx, seq_len), jax.random.key(seed))
  shardings = sharding.tree_shardings(shapes, mesh, min_size)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       shapes, shardings)
  return state, shardings


def init_sharded_state(model, tx, seed: int, seq_len: int, mesh, min_size: int):
  """A fresh ``TrainState`` laid out by ``sharding.tree_shardings``; (state, shardings)."""
  _, shardings = abstract_state(model, tx, seed, seq_len, mesh, min_size)
  init = _init_fn(model, tx, seq_len)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed)), shardings


def _init_fn(model, tx, seq_len: int):
  example = np.zeros((1, seq_len), np.int32)
  return lambda key: init_state(model, tx, key, example)


def jit_train_step(model, tx, config, shardings, mesh):
  """The train step as ``train`` runs it: ``guard.guard_step`` of ``make_train_step``,
  jitted ``(state, x0, ok) -> (state, metrics, ok)`` with the state in ``shardings``
  (donated), x0's rows split over every device and ``ok`` and the metrics replicated."""
  data, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  step = guard.guard_step(make_train_step(model, tx, config.seed, config.train.ema_decay))
  return jax.jit(step, in_shardings=(shardings, data, rep),
                 out_shardings=(shardings, rep, rep), donate_argnums=(0,))


def step_inputs(config, seq_len: int, mesh):
  """(x0, ok): the step's batch [batch_size, seq_len] int32 and its bool flag as
  ``jax.ShapeDtypeStruct`` with their shardings."""
  x0 = jax.ShapeDtypeStruct((config.train.batch_size, seq_len), jnp.int32,
                            sharding=sharding.batch_sharding(mesh))
  return x0, jax.ShapeDtypeStruct((), jnp.bool_, sharding=sharding.replicated(mesh))


def compile_step(model, tx, config, state, shardings, mesh, seq_len: int):
  """The jitted, guarded train step ``(state, x0, ok) -> (state, metrics, ok)``
  (``jit_train_step``), compiled for ``state``'s layout (arrays or abstract);
  (step_fn, FLOPs per step per device or None)."""
  step_fn = jit_train_step(model, tx, config, shardings, mesh)
  compiled = step_fn.lower(state, *step_inputs(config, seq_len, mesh)).compile()
  return compiled, mfu.compiled_flops(compiled)


def model_flops_per_device(config, vocab_size: int, seq_len: int, tx, state,
                           num_devices: int | None = None) -> float | None:
  """Model FLOPs of one train step, per device: XLA's count of the step built with
  ``model.attention = "xla"`` and ``model.remat = False``, lowered (not compiled)
  at the global batch, over the device count. The same math as any attention or
  remat setting, but XLA does not count inside cuDNN's attention kernel (a custom
  call), and recomputed work is not model work. ``num_devices``: the step's
  devices (default: all of this machine's). None if XLA has no count."""
  c = config.copy_and_resolve_references()
  c.model.attention, c.model.remat = "xla", False
  step = jax.jit(make_train_step(build.build_model(c, vocab_size, seq_len), tx, c.seed,
                                 c.train.ema_decay))
  x0 = jax.ShapeDtypeStruct((c.train.batch_size, seq_len), jnp.int32)
  flops = mfu.compiled_flops(step.lower(state, x0))
  return None if flops is None else flops / (num_devices or jax.device_count())


class BadSetup(ValueError):
  """The run cannot start as asked: its data, workdir, mesh or batch size, or a
  config that differs from the one its workdir's checkpoints were trained with.
  Raised before anything is trained or written (the command line: one line, exit 2)."""
  exit_code = 2


@contextlib.contextmanager
def _setting_up():
  """Bad input met while setting a run up (``ValueError``, ``OSError``) as ``BadSetup``."""
  try:
    yield
  except BadSetup:
    raise
  except (ValueError, OSError) as e:
    raise BadSetup(str(e)) from e


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains per ``config`` in ``workdir`` (resuming if possible); returns eval metrics.

  Faults (README "What survives what"): bad data, a workdir that cannot be
  written, a batch the devices do not divide or a config that differs from the
  one the workdir's checkpoints were trained with (outside
  ``config.RESUME_MAY_CHANGE``) raise ``BadSetup`` before anything is written;
  the workdir is locked for the run (``lock.WorkdirLocked``); a non-finite loss or
  gradient norm stops it unsaved (``guard.TrainingDiverged``); SIGTERM / SIGINT
  save the current step and stop (``preemption.RunStopped``); an unreadable
  newest checkpoint is moved aside and the one before it resumed.
  """
  config_lib.validate(config)
  workdir = io.as_path(workdir)
  with contextlib.ExitStack() as held:
    outside = held.enter_context(preemption.StopOutsideSteps())
    with _setting_up():
      workdir.mkdir(parents=True, exist_ok=True)
      held.enter_context(lock.WorkdirLock(workdir))
      mesh, dataset, model = _set_up(config, workdir)
    return _train_and_evaluate(config, workdir, mesh, dataset, model, outside)


def _set_up(config, workdir):
  """(mesh, dataset, model), checked; then ``config.json`` and the data's shape
  are written (process 0)."""
  mesh = sharding.make_mesh(config.mesh)
  sharding.check_batch(config.train.batch_size, mesh, "config.train.batch_size")
  dataset = build.build_dataset(config)
  model = build.build_model(config, dataset.vocab_size, dataset.seq_len)
  evaluate.check_settings(config, model, dataset.seq_len)
  _check_resumable(config, workdir, (dataset.vocab_size, dataset.seq_len))
  if jax.process_index() == 0:
    io.write_json(workdir / "config.json", config_lib.with_absolute_paths(config).to_dict())
    load.write_data_shape(workdir, dataset.vocab_size, dataset.seq_len)
  return mesh, dataset, model


def _check_resumable(config, workdir, data_shape: tuple[int, int]):
  """Refuses to resume a workdir's checkpoints with another run's config, or
  with a state of another shape: other data (V, N; a new ``data.synthetic.npy_path`` may
  hold another table) or a GenMD4 schedule rate turned on or off (``schedule_lr``
  > 0 gives the exponents their own optimizer state). Orbax could not restore
  such a state, and the run would take its steps for corrupt ones."""
  steps = workdir / "checkpoints"
  if not (workdir / "config.json").exists() or not (
      steps.exists() and any(p.name.isdigit() for p in steps.iterdir())):
    return
  saved = load.load_config(workdir)
  changed = config_lib.resume_changes(saved, config)
  if (workdir / load.SHAPE_FILE).exists():
    saved_shape = load.data_shape(workdir, saved)
    if tuple(saved_shape) != tuple(data_shape):
      changed.append(f"data (V, N): {tuple(saved_shape)} -> {tuple(data_shape)}")
  own_rate = lambda c: c.train.get("schedule_lr", 0.0) > 0
  if own_rate(saved) != own_rate(config):
    changed.append(f"train.schedule_lr: {saved.train.schedule_lr!r} -> "
                   f"{config.train.schedule_lr!r} (an optimizer of another layout)")
  if changed:
    shown = "; ".join(changed[:4]) + ("; ..." if len(changed) > 4 else "")
    raise BadSetup(f"{workdir} holds checkpoints of a run with another config: {shown}; "
                   "resume it with its own config (config.RESUME_MAY_CHANGE lists what may "
                   "change) or train in a new --workdir")


def _train_and_evaluate(config, workdir, mesh, dataset, model, outside) -> dict:
  tc = config.train
  tx = make_optimizer(tc)
  state, shardings = init_sharded_state(model, tx, config.seed, dataset.seq_len, mesh,
                                        config.mesh.fsdp_min_size)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints",
                                 keep=tc.keep_checkpoints, every=tc.checkpoint_every)
  writer = summaries.SummaryWriter(workdir, active=jax.process_index() == 0)
  try:  # however this ends, the last save completes and the metrics reach the disk
    with outside.deferred():  # a signal must not read as an unreadable step
      state = _resume(ckpt, state)
    start = int(state.step)
    if start > tc.num_steps:
      logging.warning("The newest checkpoint, step %d, is past train.num_steps = %d: nothing "
                      "to train; evaluating step %d", start, tc.num_steps, start)
    outside.phase = f"while setting up, before step {start + 1} of {tc.num_steps}"
    step_fn, flops = compile_step(model, tx, config, state, shardings, mesh, dataset.seq_len)
    if config.model.attention == "cudnn" or config.model.remat:  # else the same count
      flops = model_flops_per_device(config, dataset.vocab_size, dataset.seq_len, tx, state)
    peak = mfu.peak_flops_per_device(jax.devices()[0].device_kind, tc.peak_flops_per_device)
    if start == 0:
      writer.write_hparams(traverse_util.flatten_dict(config.to_dict(), sep="."))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("Training %s on %s: %d parameters, mesh data %d x fsdp %d (%s), steps "
                 "%d..%d; model FLOPs per step per device %s, peak %s", config.model.kind,
                 config.data.name, n_params, mesh.shape["data"], mesh.shape["fsdp"],
                 jax.devices()[0].device_kind, start, tc.num_steps, flops, peak)
    state_box = [state]
    feed = lambda step: train_batch(dataset, step, tc.batch_size, sharding.batch_sharding(mesh))
    rate = lambda steps_per_sec: mfu.utilisation(flops, steps_per_sec, peak)
    with preemption.StopSignals(ckpt.reached_preemption) as stop:
      _train_loop(state_box, start, step_fn, feed, rate, dataset, tc, writer, ckpt, stop)
    last = int(state_box[0].step)
    outside.phase = (f"during the final evaluation, after step {last} of {tc.num_steps} "
                     f"(saved {ckpt.directory}/{last})")
    result = evaluate.evaluate_run(config, model, dataset, state_box[0].ema_params, workdir,
                                   writer, mesh=mesh, step=last)
  finally:
    ckpt.close()
    writer.close()
  return result


def _resume(ckpt, state):
  """The newest intact checkpoint's state, or ``state`` (a fresh run). A step of
  another layout is ``BadSetup``, never taken for a corrupt one."""
  try:
    restored = ckpt.restore_newest_intact(state)
  except checkpoint.LayoutMismatch as e:
    raise BadSetup(str(e)) from None
  if restored is None:
    logging.info("No checkpoint in %s: starting at step 0", ckpt.directory)
    return state
  logging.info("Resuming from step %d (checkpoint %s/%d)", int(restored.step),
               ckpt.directory, int(restored.step))
  return restored


def _train_loop(state_box, start, step_fn, feed, rate, dataset, tc, writer, ckpt, stop):
  """Steps ``start..num_steps``; the current state lives in ``state_box[0]``;
  ``feed(step)`` is the batch, ``rate(steps_per_sec)`` the FLOP/s and MFU scalars.

  Each step's ``ok`` (guard.py) is read after the next step is dispatched, and at
  once before a save or a stop; SIGTERM / SIGINT (``stop``) save the step just
  done and raise ``preemption.RunStopped``.
  """
  sums, count, t_last, step_last = None, 0, time.time(), start
  learning_rate = learning_rate_of(tc)
  ok = jax.device_put(np.bool_(True), state_box[0].step.sharding)
  pending = None  # (step, ok, metrics) of the step before, not yet checked

  def check(done, ok, metrics):
    if not bool(ok):
      ckpt.wait()
      latest = ckpt.latest_step()
      raise guard.TrainingDiverged(guard.diverged_message(
          done, jax.device_get(metrics),
          None if latest is None else f"{ckpt.directory}/{latest}"))

  profile = Profile(tc.profile_steps, ckpt.directory.parent / "profile")
  for step in range(start, tc.num_steps):
    done = step + 1
    profile.before(done)
    state_box[0], metrics, ok = step_fn(state_box[0], feed(step), ok)
    profile.after(done, state_box[0])
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
      scalars.update(rate(steps_per_s))
      scalars["learning_rate"] = float(learning_rate(done - 1))  # of the last update
      writer.write_scalars(done, scalars)
      eta = (tc.num_steps - done) / max(steps_per_s, 1e-9)
      logging.info("step %d/%d  loss %.4f  %.1f steps/s  %s  ETA %.0fs", done, tc.num_steps,
                   scalars["loss"], steps_per_s, _flops_text(scalars), eta)
      sums, count, t_last, step_last = None, 0, now, done
    stopping = stop.requested(done)
    with stop.saving(stopping):  # a second Ctrl-C waits for the stop's checkpoint
      if stopping or done % tc.checkpoint_every == 0 or done == tc.num_steps:
        check(*pending)  # never save a non-finite state
        ckpt.save(done, state_box[0], force=True)
      if stopping:
        ckpt.wait()
        writer.flush()
    if stopping:
      raise stop.stopped(done, tc.num_steps, f"{ckpt.directory}/{done}")
  profile.after(None, state_box[0])  # LAST past train.num_steps: the trace ends here
  if tc.num_steps > start:
    logging.info("Trained steps %d..%d", start, tc.num_steps)


class Profile:
  """A ``jax.profiler`` trace of steps FIRST..LAST (``train.profile_steps``) in
  ``logdir`` (``tensorboard --logdir=WORKDIR``, profile tab); process 0 only."""

  def __init__(self, spec: str, logdir):
    steps = config_lib.parse_profile_steps(spec)
    self.first, self.last = steps if steps and jax.process_index() == 0 else (0, -1)
    self.logdir, self.tracing = logdir, False

  def before(self, step: int):
    if step == self.first:
      jax.profiler.start_trace(str(self.logdir))
      self.tracing = True

  def after(self, step: int, state):
    """Ends the trace after step LAST (``step = None``: now, the last step run)."""
    if self.tracing and step in (self.last, None):
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      self.tracing = False
      logging.info("Profile of steps %d..%d in %s", self.first, self.last, self.logdir)


def _flops_text(scalars) -> str:
  if "flops_per_sec" not in scalars:
    return ""
  text = f"{scalars['flops_per_sec'] / 1e12:.3g} TFLOP/s per device"
  return text + (f"  MFU {scalars['mfu']:.1%}" if "mfu" in scalars else "")
