"""One training run per workdir: an exclusive lock with its holder's name.

``WorkdirLock(workdir)`` holds ``workdir/.lock`` for the life of a run. A second
run on the same workdir fails at once with ``WorkdirLocked`` naming the holder
(pid, host, start time); the first run is untouched.

- Local folders (and NFS): ``fcntl.flock`` on the file. The kernel drops the
  lock when its process dies, however it dies (SIGKILL included), so a lock left
  by a dead run is simply taken over; the warning names the dead holder.
- URLs (``gs://...``), or file systems without ``flock``: the file itself is the
  lock, with a heartbeat rewritten every ``HEARTBEAT_S`` seconds. It is stale,
  and taken over, when its holder ran on this host and that pid is gone, or when
  its heartbeat is older than ``STALE_AFTER_S``.

On several processes only process 0 takes the lock (they are one run); the
outcome is broadcast, so every process of a refused run stops together.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time

from absl import logging
from etils import epath

from vmd_jax.trainer import io

LOCK_NAME = ".lock"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0


class WorkdirLocked(RuntimeError):
  """Another live run holds the workdir (exit code 1 on the command line)."""
  exit_code = 1


def _holder() -> dict:
  return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
          "heartbeat": time.time()}


def _describe(holder: dict) -> str:
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
  return f"pid {holder.get('pid')} on host {holder.get('host')} (since {started})"


def _parse(text: str) -> dict | None:
  try:
    holder = json.loads(text)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, TypeError, ValueError):
    return True  # someone else's live process, or an unreadable pid: assume alive
  return True


class WorkdirLock:
  """Context manager: holds ``workdir/.lock`` (see the module docstring)."""

  def __init__(self, workdir):
    self.path = epath.Path(workdir) / LOCK_NAME
    self._file = None
    self._heartbeat = None
    self._stop = threading.Event()

  def __enter__(self) -> "WorkdirLock":
    import jax
    error = None
    if jax.process_index() == 0:
      try:
        self._acquire()
      except WorkdirLocked as e:
        error = e
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      refused = multihost_utils.broadcast_one_to_all(int(error is not None))
      if int(refused) and error is None:
        error = WorkdirLocked(f"{self.path.parent} is held by another run (see process 0)")
    if error is not None:
      raise error
    return self

  def __exit__(self, *exc):
    self.release()

  def _acquire(self):
    if "://" not in os.fspath(self.path):
      try:
        return self._acquire_flock()
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
          raise
    self._acquire_file()

  def _acquire_flock(self):
    f = open(self.path, "a+")
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = _parse(f.read()) or {}
      f.close()
      raise WorkdirLocked(f"{self.path.parent} is in use by {_describe(holder)}; "
                          f"lock file {self.path}") from None
    except OSError:
      f.close()
      raise
    f.seek(0)
    previous = _parse(f.read())
    if previous:  # a run that died without releasing: the kernel dropped its flock
      logging.warning("Took over the lock of %s, which is no longer running", _describe(previous))
    f.seek(0)
    f.truncate()
    f.write(json.dumps(_holder()))
    f.flush()
    self._file = f

  def _acquire_file(self):
    if self.path.exists():
      holder = _parse(self.path.read_text()) or {}
      dead_here = (holder.get("host") == socket.gethostname()
                   and not _pid_alive(holder.get("pid")))
      silent = time.time() - float(holder.get("heartbeat", 0)) > STALE_AFTER_S
      if not (dead_here or silent):
        raise WorkdirLocked(f"{self.path.parent} is in use by {_describe(holder)}; lock file "
                            f"{self.path} (taken over once its heartbeat is "
                            f"{STALE_AFTER_S:.0f} s old)")
      logging.warning("Took over the lock of %s, which is no longer running", _describe(holder))
    mine = _holder()
    io.write_json(self.path, mine)
    self._heartbeat = threading.Thread(target=self._beat, args=(mine,), daemon=True,
                                       name="workdir-lock-heartbeat")
    self._heartbeat.start()

  def _beat(self, mine: dict):
    while not self._stop.wait(HEARTBEAT_S):
      mine["heartbeat"] = time.time()
      try:
        io.write_json(self.path, mine)
      except OSError as e:
        logging.warning("Could not refresh the workdir lock %s: %s", self.path, e)

  def release(self):
    """Empties the lock file and lets go (the file stays: deleting a flock'ed
    file would let two runs lock two different files)."""
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()
      self._file.close()  # closing drops the flock
      self._file = None
    if self._heartbeat is not None:
      self._stop.set()
      self._heartbeat.join()
      self._heartbeat = None
      if self.path.exists():
        self.path.unlink()
