"""Orbax checkpoints for any trainer: `latest/` to resume, `best/` to use.

Layout under a run directory:
  latest/<step>/  the whole train state (any pytree; a dict's "params" entry is stored as its own
                  item) and a JSON `meta` dict (step, losses, ...). Written every few steps and at
                  the end; only the newest is kept. A crash mid-write leaves the previous one.
  best/<step>/    parameters only, and `meta`, for the lowest validation loss seen so far.

Restoring needs the abstract state (shapes/dtypes, e.g. from `jax.eval_shape` of the init), so
that arrays come back with the right structure (and, with shardings in the abstract leaves,
directly in their sharded layout). Writes are synchronous: the trainers donate their state to the
next step, and an asynchronous save would read buffers that the step is about to overwrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from rltf_jax.errors import DataError

LATEST, BEST = "latest", "best"


def _manager(path: Path, keep: int = 1) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(path.absolute(), options=options)


def _abstract(tree):
  """ShapeDtypeStructs for a tree of arrays or of ShapeDtypeStructs (shardings kept)."""
  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
  return jax.tree.map(leaf, tree)


def _split_params(state):
  if isinstance(state, dict) and "params" in state:
    rest = {k: v for k, v in state.items() if k != "params"}
    return state["params"], rest
  return None, state


class Checkpointer:
  """Latest + best checkpoints of one run directory."""

  def __init__(self, directory: str | Path):
    self.dir = Path(directory)
    self._latest = _manager(self.dir / LATEST)
    self._best = _manager(self.dir / BEST)

  # ---------------------------------------------------------------- latest (resume)
  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save_latest(self, step: int, state: Any, meta: dict | None = None) -> None:
    params, rest = _split_params(state)
    items = dict(state=ocp.args.StandardSave(rest), meta=ocp.args.JsonSave(dict(meta or {}, step=step)))
    if params is not None:
      items["params"] = ocp.args.StandardSave(params)
    self._latest.save(step, args=ocp.args.Composite(**items), force=True)
    self._latest.wait_until_finished()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest checkpoint, or None when there is none."""
    step = self.latest_step()
    if step is None:
      return None
    params, rest = _split_params(_abstract(abstract_state))
    items = dict(state=ocp.args.StandardRestore(rest), meta=ocp.args.JsonRestore())
    if params is not None:
      items["params"] = ocp.args.StandardRestore(params)
    try:
      got = self._latest.restore(step, args=ocp.args.Composite(**items))
    except (ValueError, KeyError, FileNotFoundError) as e:
      raise DataError(f"{self.dir / LATEST}/{step}: cannot restore the train state ({e}); the run's "
                      "config may have changed since it was written: use a new workdir or delete it") from e
    state = got["state"]
    if params is not None:
      state = dict(state, params=got["params"])
    return state, dict(got["meta"])

  # ---------------------------------------------------------------- best (use)
  def best_meta(self) -> dict | None:
    step = self._best.latest_step()
    if step is None:
      return None
    return dict(self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def save_best(self, step: int, params: Any, meta: dict | None = None) -> None:
    self._best.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(dict(meta or {}, step=step))),
        force=True)
    self._best.wait_until_finished()

  def restore_params(self, abstract_params: Any, which: str = BEST) -> Any:
    """Parameters of the best (or latest) checkpoint."""
    if which not in (BEST, LATEST):
      raise ValueError(f"which must be {BEST!r} or {LATEST!r}, got {which!r}")
    mngr = self._best if which == BEST else self._latest
    step = mngr.latest_step()
    if step is None:
      raise DataError(f"{self.dir / which}: no checkpoint; train first (or point to another run)")
    got = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(abstract_params))))
    return got["params"]

  def close(self) -> None:
    self._latest.close()
    self._best.close()


def restore_params(ckpt_dir: str | Path, abstract_params: Any, which: str = BEST) -> Any:
  """Parameters stored under `ckpt_dir` (see `Checkpointer`)."""
  if not (Path(ckpt_dir) / which).is_dir():
    raise DataError(f"{Path(ckpt_dir) / which}: no such checkpoint directory; train first "
                    "(or point to another run)")
  ckpt = Checkpointer(ckpt_dir)
  try:
    return ckpt.restore_params(abstract_params, which)
  finally:
    ckpt.close()
