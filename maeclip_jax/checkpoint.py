"""Orbax checkpoints of the train state plus the data position, saved asynchronously.

A checkpoint at step s holds `state` (params, optimizer state, step; sharded arrays written
cooperatively by all processes) and `meta` (JSON: the step, the number of examples consumed per
process, the config name), so that a resumed run restarts its input exactly where it stopped.
"""
import logging
from typing import Any, Optional, Tuple

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the last `keep`."""

    def __init__(self, directory: str, every_steps: int, keep: int):
        self.every_steps = every_steps
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=True)
        self._mngr = ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> Optional[int]:
        return self._mngr.latest_step()

    def restore(self, abstract_state: Any, step: Optional[int] = None) -> Tuple[Any, dict]:
        """Restores (state, meta) at `step` (default: latest) onto `abstract_state`'s shardings.

        Args:
          abstract_state: pytree of jax.ShapeDtypeStruct carrying the target shardings.
        """
        step = self.latest_step() if step is None else step
        restored = self._mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["meta"])

    def maybe_save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        if not force and (self.every_steps <= 0 or step % self.every_steps):
            return False
        if self._mngr.latest_step() == step:
            return False
        self._mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        logging.info("checkpoint: saving step %d (asynchronously)", step)
        return True

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def abstract_with_shardings(shapes: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs (from jax.eval_shape) with the given shardings attached."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)
