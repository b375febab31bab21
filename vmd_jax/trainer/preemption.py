"""Stopping on SIGTERM (how TPU and SLURM preemption arrives) and SIGINT (Ctrl-C).

Inside ``with StopSignals() as stop:`` a signal does not kill the process; the
loop asks ``stop.requested(step)`` after every step and, when it says yes,
saves a checkpoint at that step and raises ``RunStopped``.

- One process: SIGTERM and SIGINT set a flag; the step that is running finishes.
- Several processes (``jax.distributed`` with its preemption service, the
  default): JAX's own SIGTERM listener tells every process, and
  ``CheckpointManager.reached_preemption(step)`` (orbax, over
  ``multihost_utils.reached_preemption_sync_point``) turns true at the same
  step on all of them, so all save that step. SIGINT is passed on as SIGTERM to
  join that protocol. Python's handler must not replace JAX's SIGTERM one.

A second SIGINT stops at once, for an impatient Ctrl-C, saying plainly that the
current step is not saved (``RunStopped``, exit 130) -- unless the stop's
checkpoint is being written (``stop.saving``): then it waits for that save, so
the progress is not lost half-way inside orbax.

Outside the steps (set-up, compilation, the final evaluation), inside
``with StopOutsideSteps() as outside:``, a signal stops the run at once with
``RunStopped`` naming ``outside.phase``: nothing is lost there, since only the
steps write checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
from absl import logging


class RunStopped(Exception):
  """Stopped by a signal after saving; exit code 128 + the signal number (143
  for SIGTERM, 130 for SIGINT), as for a process ended by that signal, so a
  scheduler restarts the run instead of marking it done."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


def _jax_handles_sigterm() -> bool:
  """Whether JAX's preemption service watches SIGTERM (several processes)."""
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class _Handling:
  """Installs ``self._handle`` for some signals while inside; restores the previous
  handlers on exit. Only the main thread may install signal handlers."""

  def _signals(self) -> tuple:
    raise NotImplementedError

  def __enter__(self):
    self._previous = {}
    if threading.current_thread() is not threading.main_thread():
      logging.warning("Training outside the main thread: SIGTERM / SIGINT are not caught")
      return self
    for s in self._signals():
      self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()


class StopSignals(_Handling):
  """Context manager turning SIGTERM / SIGINT into a request to stop after a step."""

  def __init__(self, reached_preemption=None):
    """``reached_preemption(step)``: the multi-process sync point (orbax's
    ``CheckpointManager.reached_preemption``); unused on one process."""
    self.signum = None
    self._reached_preemption = reached_preemption
    self._synced = False
    self._saving = False

  def _signals(self) -> tuple:
    self._synced = _jax_handles_sigterm() and self._reached_preemption is not None
    return (signal.SIGINT,) if self._synced else (signal.SIGTERM, signal.SIGINT)

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      if self._saving:
        logging.warning("Received SIGINT again: the checkpoint of this stop is being written; "
                        "stopping once it is (SIGKILL stops at once, without it)")
        return
      raise RunStopped("stopped at once by a second SIGINT, without saving the current step; "
                       "run the same command again to resume from the last checkpoint",
                       signal.SIGINT)
    self.signum = signum
    logging.warning("Received %s: stopping after the current step, with a checkpoint "
                    "(Ctrl-C again stops at once)", signal.Signals(signum).name)
    if self._synced and signum == signal.SIGINT:
      os.kill(os.getpid(), signal.SIGTERM)  # let JAX's listener sync every process

  @contextlib.contextmanager
  def saving(self, saving: bool = True):
    """Inside, while ``saving``, a second SIGINT waits for the save (see above)."""
    self._saving = saving
    try:
      yield
    finally:
      self._saving = False

  def requested(self, step: int) -> bool:
    """True when the run should save ``step`` and stop (the same step on every process)."""
    if self._synced:
      return bool(self._reached_preemption(step))
    return self.signum is not None

  def stopped(self, step: int, num_steps: int, saved: str) -> RunStopped:
    """The exception to raise once ``step`` is saved in ``saved``."""
    signum = self.signum or signal.SIGTERM  # JAX's listener took it: SIGTERM
    return RunStopped(f"stopped by {signal.Signals(signum).name} after step {step} of "
                      f"{num_steps}; saved {saved}; run the same command again to resume",
                      signum)


class StopOutsideSteps(_Handling):
  """Context manager: SIGTERM / SIGINT raise ``RunStopped`` at once, naming
  ``phase`` (e.g. "while setting up, before step 0 of 100"). ``StopSignals``
  takes the signals over inside it. With several processes JAX's listener keeps
  SIGTERM (its preemption service acts at the next step), so only SIGINT is caught."""

  def __init__(self, phase: str = "while setting up"):
    self.phase = phase
    self._deferring, self._pending = False, None

  def _signals(self) -> tuple:
    return (signal.SIGINT,) if _jax_handles_sigterm() else (signal.SIGTERM, signal.SIGINT)

  @contextlib.contextmanager
  def deferred(self):
    """Inside, a signal is noted and raised as ``RunStopped`` on leaving: for work
    an exception must not cut short, such as orbax's restore (whose errors read
    as a corrupt step, which would be moved aside)."""
    self._deferring = True
    try:
      yield
    finally:
      self._deferring = False
    if self._pending is not None:
      self._stop(self._pending)

  def _handle(self, signum, frame):
    del frame
    if self._deferring:
      self._pending = signum
      logging.warning("Received %s: stopping once the checkpoint is read",
                      signal.Signals(signum).name)
      return
    self._stop(signum)

  def _stop(self, signum):
    raise RunStopped(f"stopped by {signal.Signals(signum).name} {self.phase}; run the same "
                     "command again to resume", signum)
