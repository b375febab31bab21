"""Orbax checkpoints of the train state: periodic, keep-N, resume from the latest.

Orbax writes each step into a temporary directory and renames it when complete,
so a killed run never leaves a half-written step behind (its temporary directory
is removed at the next start). Each step carries a checksum of every array it
holds (``checksums``, in the step's ``_CHECKPOINT_METADATA``), verified on every
restore, so bytes changed on disk are never loaded as good (orbax's own crc32c
covers only zarr3's shard index, not the data). ``restore_newest_intact`` resumes
from the newest step that reads back whole, matching its checksums and finite: a
newer one that does not (truncated or missing files, a disk that lied, NaN) is
moved to ``<directory>_corrupt/<step>`` with a one-line warning naming it, never
deleted.

Readers (``vmd-jax evaluate`` / ``sample``, ``vmd_jax.load``) open the directory
``read_only``: they change nothing in it (a training run may hold the workdir
and be writing a step), and ``restore_newest_intact_subtree`` skips a bad step
with a one-line warning instead of moving it; the next training run moves it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class CheckpointError(RuntimeError):
  pass


class DiskFull(RuntimeError):
  """A save ran out of space: one line naming the directory, the space left and
  the intact steps; the run ends with exit 1 (``exit_code``)."""
  exit_code = 1


def _no_space(error: BaseException | None) -> bool:
  """Whether ``error`` or an exception it was raised from is ENOSPC (orbax wraps
  the errors of its writing threads)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return True
    error = error.__cause__ or error.__context__
  return False


class LayoutMismatch(ValueError):
  """A step whose metadata reads back but describes arrays of other shapes than
  the state restored into: another model, optimizer or vmd_jax version wrote it.
  Not a corrupt step: it is left where it is."""


def all_finite(tree) -> bool:
  """True when every floating-point leaf of ``tree`` is finite (one device reduction)."""
  leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs])))(
      leaves)) if leaves else True


def _on_every_process(ok: bool) -> bool:
  """``ok`` on every process (several processes must agree on what to restore)."""
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _first_line(error: BaseException, limit: int = 300) -> str:
  """``Type: message``'s first line. Orbax's read errors end in a dump of the
  TensorStore spec (``See full TensorStore details: <bound method ...>``); the
  error they were raised from names the file and the reason, so that is used."""
  text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
  if " See full TensorStore details" in text:
    text = text.split(" See full TensorStore details")[0]
    cause = error.__cause__ or error.__context__
    if cause is not None:
      text = f"{text.rstrip('.')}: {_first_line(cause, limit)}"
  return text if len(text) <= limit else text[:limit] + "..."


def _path_name(path) -> str:
  """``ema_params/Dense_0/kernel``: a leaf's path by names, the same for a dict, a
  dataclass or a named tuple holding it (a subtree restored alone matches)."""
  def name(key):
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return "/".join(name(k) for k in path)


@jax.jit
def _leaf_sums(leaves):
  """Two position-weighted sums mod 2^32 of each leaf's bit patterns: a leaf's
  checksum, computed on the devices whatever the mesh (a sharded leaf gives the
  same sums as the whole one). One changed word always changes the first sum
  (its weight 2i + 1 is odd); several collide with odds about 2^-64."""
  def sums(x):
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    bits = jax.lax.bitcast_convert_type(
        x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize])
    bits = bits.reshape(-1).astype(jnp.uint32)
    i = jnp.arange(bits.size, dtype=jnp.uint32)
    mixed = (bits ^ jnp.uint32(0x5bd1e995)) * (i * jnp.uint32(0x9E3779B9) | 1)
    return jnp.stack([jnp.sum(bits * (2 * i + 1)), jnp.sum(mixed)])
  return [sums(x) for x in leaves]


def checksums(tree) -> dict[str, str]:
  """{leaf path: checksum} of every array of ``tree`` (see ``_leaf_sums``)."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(tree)[0]) or ((), ())
  sums = jax.device_get(_leaf_sums(list(leaves)))
  return {_path_name(p): f"{int(a):08x}{int(b):08x}" for p, (a, b) in zip(paths, sums)}


_DROPPING = False
ORBAX_READS = ("_read_array_index_and_device_put", "async_deserialize")


def _is_abandoned_read(exc_type, exc, tb) -> bool:
  """True for the reports of reads that orbax had already given up on (a
  truncated checkpoint file) finishing after orbax closed its event loop:
  ``RuntimeError("Event loop is closed")`` raised in ``call_soon_threadsafe``,
  called straight from one of tensorstore's threads, or one of orbax's read
  coroutines (``_read_array_index_and_device_put``, finalised on Python 3.12;
  ``async_deserialize``, whose task asyncio logs as never retrieved) ending with
  its read's error. The reader has already skipped that step; nothing is lost."""
  codes = []
  while tb is not None:  # outermost frame first
    codes.append(tb.tb_frame.f_code)
    tb = tb.tb_next
  if exc_type is RuntimeError and str(exc) == "Event loop is closed":
    return bool(codes) and codes[0].co_name == "call_soon_threadsafe"
  return any(c.co_name in ORBAX_READS and "/orbax/" in c.co_filename for c in codes)


class _AbandonedReadRecords:
  """Drops log records whose exception is an ``_is_abandoned_read`` one: asyncio's
  "Task exception was never retrieved" for a read task collected after orbax gave
  up on it."""

  def filter(self, record):
    return not (record.exc_info and _is_abandoned_read(*record.exc_info))


@contextlib.contextmanager
def _without_log(prefix: str):
  """Drops absl log records whose message starts with ``prefix`` meanwhile."""
  import logging as std_logging

  class Drop:
    def filter(self, record):
      return not str(record.msg).startswith(prefix)

  logger, drop = std_logging.getLogger("absl"), Drop()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def drop_abandoned_reads():
  """Keeps ``_is_abandoned_read`` reports (made through ``sys.unraisablehook``, at
  any moment, even mid-line, or logged by asyncio) out of stderr. Installed once, by
  the command line and by the first ``Checkpointer`` (``vmd_jax.load`` alike)."""
  global _DROPPING
  if _DROPPING:
    return
  _DROPPING = True
  import logging as std_logging
  records = _AbandonedReadRecords()
  logging.get_absl_handler().addFilter(records)
  std_logging.getLogger("asyncio").addFilter(records)
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _is_abandoned_read(unraisable.exc_type, unraisable.exc_value,
                              unraisable.exc_traceback):
      previous(unraisable)
  sys.unraisablehook = hook


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) describing ``tree``, for restoring into. A
  leaf without a sharding (``jax.eval_shape``'s) is restored replicated on every
  device, whatever mesh saved it (a run trained on a pod loads on one GPU)."""
  everywhere = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("devices",)),
                                          jax.sharding.PartitionSpec())
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None) or everywhere),
      tree)


class Checkpointer:
  """Saves every ``every`` steps (and when forced), keeps the last ``keep``.

  ``read_only``: only restores; creates, removes and rewrites nothing (not even
  the temporary directory of a save in progress)."""

  def __init__(self, directory, *, keep: int = 2, every: int = 1000, read_only: bool = False):
    drop_abandoned_reads()  # a read given up on reports when it is collected
    self.directory = epath.Path(directory)
    self.every = every
    self._saving = None  # the step of the save in progress, if any
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0,
                                             create=False)
      with _without_log("Given directory is read only"):  # orbax repeating what we asked
        self._manager = ocp.CheckpointManager(self.directory, options=options)
      return
    # Steps are chosen here (orbax alone would also save the very first step);
    # temporary directories of a killed save are removed at the next start.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                           cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves (asynchronously) if ``step`` is a multiple of ``every`` or ``force``."""
    if not force and step % self.every:
      return False
    self._saving = step
    with self._disk_full_is_one_line():
      return self._manager.save(step, args=ocp.args.StandardSave(state), force=True,
                                custom_metadata={"checksums": checksums(state)})

  @contextlib.contextmanager
  def _disk_full_is_one_line(self):
    """Turns ENOSPC from a save (or from waiting for one) into ``DiskFull``."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if not _no_space(e):
        raise
      raise self._disk_full() from None

  def _disk_full(self) -> DiskFull:
    where = self.directory
    while not where.exists() and where != where.parent:
      where = where.parent
    free = ("unknown" if "://" in str(where) else
            f"{shutil.disk_usage(where).free / 2**20:.0f} MiB")
    with contextlib.suppress(Exception):  # an earlier save still finishing counts
      self._manager.wait_until_finished()
    self._manager.reload()
    steps = ", ".join(map(str, sorted(self._manager.all_steps()))) or "none"
    return DiskFull(f"no space left on the device of {self.directory} while saving step "
                    f"{self._saving} ({free} free); intact steps: {steps}; free some space "
                    "and run the same command again to resume")

  def checksum_problem(self, step: int, tree) -> str | None:
    """What is wrong with ``tree`` (step ``step``'s state, or ``{field: value}``)
    against the checksums saved with the step, or None when every leaf matches. A
    step without checksums (written before they were) passes; one whose metadata
    file is missing or unreadable does not."""
    try:
      saved = json.loads((self.directory / str(step) / "_CHECKPOINT_METADATA").read_text())
      saved = (saved.get("custom_metadata") or {}).get("checksums")
    except Exception as e:  # pylint: disable=broad-except
      return f"has an unreadable _CHECKPOINT_METADATA ({_first_line(e)})"
    if saved is None:
      return None
    here = checksums(tree)
    bad = [k for k, v in here.items() if saved.get(k) != v]
    return (f"does not match the checksums written with it ({len(bad)} of {len(here)} arrays "
            f"differ, e.g. {bad[0]}): its files changed on disk") if bad else None

  def restore(self, target, step: int | None = None, *, verify: bool = True):
    """Restores ``step`` (default: the latest) into the structure of ``target``,
    checked against the step's checksums unless ``verify`` is False."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    try:
      state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(f"checkpoint step {step} in {self.directory} could not be "
                            f"restored ({_first_line(e)})") from e
    problem = self.checksum_problem(step, state) if verify else None
    if problem:
      raise CheckpointError(f"checkpoint step {step} in {self.directory} {problem}")
    return state

  def restore_newest_intact(self, target):
    """Restores the newest step that reads back whole with finite values into the
    structure of ``target``; each newer step that does not is moved aside (see
    the module docstring). Returns the state, or None when no step is left."""
    def read(step):
      self.check_layout(target, step)
      state = self.restore(target, step, verify=False)
      problem = self.checksum_problem(step, state)
      if problem:
        raise CheckpointError(problem)
      if not all_finite(state):
        raise CheckpointError("holds non-finite values")
      return state

    def set_aside(step, error):
      problem = ("failed on another process" if error is None else
                 f"could not be restored ({_first_line(error.__cause__)})" if error.__cause__
                 else str(error))
      moved = self.move_aside(step)
      logging.warning("Checkpoint step %d in %s %s: moved to %s; trying the step before it",
                      step, self.directory, problem, moved)

    return self._newest_readable(read, set_aside)[1]

  def check_layout(self, target, step: int) -> None:
    """Raises ``LayoutMismatch`` when step ``step``'s metadata reads back and its
    arrays' shapes differ from ``target``'s (as multisets), on any process (all
    raise together); an unreadable metadata file is left to ``restore``, which
    takes the step for a corrupt one."""
    problem = self._layout_problem(target, step)
    if not _on_every_process(problem is None):
      raise LayoutMismatch(problem or f"checkpoint step {step} in {self.directory} holds a "
                           "state of another layout, as another process read it")

  def _layout_problem(self, target, step: int) -> str | None:
    """What ``check_layout`` raises on this process, or None."""
    from collections import Counter
    handler = ocp.StandardCheckpointHandler()  # the manager's own handler, read-only use
    try:  # a single-item manager keeps the state in <step>/default
      metadata = handler.metadata(self.directory / str(step) / "default")
      saved = Counter(tuple(getattr(leaf, "shape", ()) or ()) for leaf in jax.tree.leaves(metadata))
    except Exception:  # pylint: disable=broad-except
      return None
    finally:
      handler.close()
    here = Counter(tuple(leaf.shape) for leaf in jax.tree.leaves(target))
    if not saved or saved == here:
      return None
    only_saved, only_here = sorted((saved - here).elements()), sorted((here - saved).elements())
    return (f"checkpoint step {step} in {self.directory} holds a state of another layout "
            f"({sum(saved.values())} arrays, {sum(here.values())} here; shapes only there: "
            f"{only_saved[:3]}, only here: {only_here[:3]}): another model, optimizer or "
            "vmd_jax version wrote it; resume with those, or train in a new --workdir")

  def _newest_readable(self, read, on_bad):
    """(step, ``read(step)``) of the newest step that every process reads without
    ``CheckpointError``, or (None, None). ``on_bad(step, error)`` is called for each
    newer step, newest first; ``error`` is None where only another process failed."""
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        tree, error = read(step), None
      except CheckpointError as e:
        tree, error = None, e
      if _on_every_process(error is None):
        return step, tree
      on_bad(step, error)
    return None, None

  def move_aside(self, step: int) -> epath.Path:
    """Moves step ``step`` to ``<directory>_corrupt/<step>[.N]`` (process 0) and
    returns that path, the same on every process (process 0 chooses N); orbax no
    longer lists the step."""
    aside = self.directory.parent / f"{self.directory.name}_corrupt"
    n = 0
    if jax.process_index() == 0:
      while (aside / self._aside_name(step, n)).exists():
        n += 1
      aside.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(aside / self._aside_name(step, n))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      n = int(multihost_utils.broadcast_one_to_all(np.int32(n)))
    self._manager.reload()
    return aside / self._aside_name(step, n)

  @staticmethod
  def _aside_name(step: int, n: int) -> str:
    return f"{step}.{n}" if n else str(step)

  def reached_preemption(self, step: int) -> bool:
    """Orbax's multi-process preemption sync point (False on one process)."""
    return self._manager.reached_preemption(step)

  def restore_subtree(self, name: str, target, step: int | None = None):
    """Restores only the field ``name`` of the saved state (e.g. "ema_params") of
    ``step`` (default: the latest) into the structure of ``target``, reading
    nothing else (no optimizer state). A step that is missing, unreadable or not
    finite raises ``CheckpointError`` in one line naming it; no fallback."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    if step not in self._manager.all_steps():
      raise CheckpointError(f"no checkpoint step {step} in {self.directory} (steps there: "
                            f"{sorted(self._manager.all_steps()) or 'none'})")
    abstract = {name: abstract_like(target)}
    args = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)
    try:
      tree = self._manager.restore(step, args=args)[name]
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(f"{name} of checkpoint step {step} in {self.directory} could not "
                            f"be restored ({_first_line(e)})") from e
    problem = self.checksum_problem(step, {name: tree})
    if problem:
      raise CheckpointError(f"{name} of checkpoint step {step} in {self.directory} {problem}")
    if not all_finite(tree):
      raise CheckpointError(f"{name} of checkpoint step {step} in {self.directory} holds "
                            "non-finite values")
    return tree

  def restore_newest_intact_subtree(self, name: str, target):
    """(step, field ``name``) of the newest step whose field reads back whole and
    finite: ``restore_newest_intact`` for readers. Each newer step is skipped with
    a one-line warning naming it and left where it is (see the module docstring);
    every process picks the same step. ``CheckpointError`` when none is intact."""
    skipped = []

    def skip(step, error):
      logging.warning("%s: skipped, left in place; trying the step before it",
                      error or f"checkpoint step {step} failed on another process")
      skipped.append(step)

    step, tree = self._newest_readable(lambda step: self.restore_subtree(name, target, step),
                                       skip)
    if step is not None:
      return step, tree
    if not skipped:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    raise CheckpointError(f"no intact checkpoint in {self.directory}: steps "
                          f"{', '.join(map(str, skipped))} are unreadable or not finite")

  def wait(self):
    with self._disk_full_is_one_line():
      self._manager.wait_until_finished()

  def close(self):
    try:
      self.wait()
    finally:
      self._manager.close()
