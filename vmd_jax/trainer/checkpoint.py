"""Orbax checkpoints of the train state: periodic, keep-N, resume from the latest.

Orbax writes each step into a temporary directory and renames it when complete,
so a killed run never leaves a half-written step behind. A step that cannot be
read (a corrupt or foreign checkpoint) raises ``CheckpointError`` naming its
directory; nothing is deleted.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointError(RuntimeError):
  pass


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
  """Saves every ``every`` steps (and when forced), keeps the last ``keep``."""

  def __init__(self, directory, *, keep: int = 2, every: int = 1000):
    self.directory = epath.Path(directory)
    self.every = every
    # Steps are chosen here (orbax alone would also save the very first step);
    # temporary directories of a killed save are removed at the next start.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves (asynchronously) if ``step`` is a multiple of ``every`` or ``force``."""
    if not force and step % self.every:
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, target, step: int | None = None):
    """Restores ``step`` (default: the latest) into the structure of ``target``."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    try:
      return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_like(target)))
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} could not be restored "
          f"({type(e).__name__}: {e}). It was left in place: move it away to resume "
          f"from an earlier step, or use a new workdir.") from e

  def restore_subtree(self, name: str, target, step: int | None = None):
    """Restores only the field ``name`` of the saved state (e.g. "ema_params")
    into the structure of ``target``, reading nothing else (no optimizer state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    abstract = {name: abstract_like(target)}
    args = ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract),
        partial_restore=True)
    try:
      return self._manager.restore(step, args=args)[name]
    except Exception as e:  # orbax raises many types for unreadable data
      raise CheckpointError(f"{name} of checkpoint step {step} in {self.directory} could not "
                            f"be restored ({type(e).__name__}: {e})") from e

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
