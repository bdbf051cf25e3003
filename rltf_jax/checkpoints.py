"""The loading layer: checkpoint files of every model, below both `training/` and `sampling/`.

Trainers write through `Checkpointer`; generators, the evaluation and the fine-tunes read through
`load_decoder` and `restore_module`. Nothing here imports `training/` or `sampling/`.

Orbax checkpoints for any trainer: `latest/` to resume, `best/` to use. Layout under a run directory:
  latest/<step>/  the whole train state (any pytree; a dict's "params" entry is stored as its own
                  item) and a JSON `meta` dict (step, losses, ...). Written every few steps and at
                  the end; only the newest is kept. A crash mid-write leaves the previous one.
  best/<step>/    parameters only, and `meta`, for the lowest validation loss seen so far.

Restoring needs the abstract state (shapes/dtypes, e.g. from `jax.eval_shape` of the init), so
that arrays come back with the right structure (and, with shardings in the abstract leaves,
directly in their sharded layout).

Trainers write asynchronously (`Checkpointer(..., asynchronous=True)`): `save` returns once orbax has
copied the arrays to host memory (its default, synchronous device-to-host transfer, which orbax
documents as safe against donation: the trainers donate their state to the next step), and the
files are written in a background thread while training goes on. `wait()` and `close()` wait for
the writes; the loop closes its `Checkpointer` before returning or raising, so a run never reports
a checkpoint (finished, preempted, diverged) that is still being written. Everyone else writes
synchronously.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from jax.sharding import SingleDeviceSharding
import orbax.checkpoint as ocp
from flax import nnx

from rltf_jax import io, runs
from rltf_jax.data.vocab import Vocabulary
from rltf_jax.errors import DataError, StorageError, is_storage_failure, storage_message
from rltf_jax.models import decoder as dec

LATEST, BEST = "latest", "best"
# Files of a decoder run directory (pretrained or fine-tuned), beside latest/ and best/.
MODEL_CONFIG_FILE = "model_config.json"
VOCAB_FILE = "vocab.json"
START_PRIOR_FILE = "start_prior.npz"  # first-visit attributes that unconditional generation starts from
# Files of a baseline (LSTM, HALO) run directory.
BASELINE_MODEL_FILE = "model.json"     # model sizes and config section, to rebuild the model
BASELINE_ATTRIBUTES_FILE = "attributes.npz"  # visit statistics that date and place generated visits
# Model-config fields that checkpoints written before the field existed lack, with the value those
# checkpoints were computed with (not defaults: `rltf_jax/configs/base.py` holds those).
LEGACY_MODEL_FIELDS = dict(compute_dtype="float32")


def _manager(path: Path, keep: int = 1, asynchronous: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(path.absolute(), options=options)


def _abstract(tree):
  """ShapeDtypeStructs for a tree of arrays or of ShapeDtypeStructs (shardings kept).

  A leaf without a sharding is read onto this process's first device: orbax would otherwise
  restore the sharding the checkpoint was written with, and refuse when that mesh (a sharded
  pretraining on several devices) is not the reader's."""
  def leaf(x):
    sharding = getattr(x, "sharding", None) or SingleDeviceSharding(jax.local_devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


def _split_params(state):
  if isinstance(state, dict) and "params" in state:
    rest = {k: v for k, v in state.items() if k != "params"}
    return state["params"], rest
  return None, state


def _save(mngr: ocp.CheckpointManager, step: int, args, where: Path, wait: bool = True) -> None:
  """Saves `step` (replacing it: a rerun after a kill between two checkpoint writes saves a step
  again, and the newer write wins); a storage failure becomes one `StorageError` line. Without
  `wait` the files are written in the background (`_wait`)."""
  with _storage_errors(where, step):
    mngr.wait_until_finished()  # a pending write of this step would land after the delete
    if step in mngr.all_steps():
      mngr.delete(step)
    mngr.save(step, args=args, force=True)
    if wait:
      mngr.wait_until_finished()


def _wait(mngr: ocp.CheckpointManager, where: Path) -> None:
  with _storage_errors(where, mngr.latest_step()):
    mngr.wait_until_finished()


@contextlib.contextmanager
def _storage_errors(where: Path, step):
  try:
    yield
  except Exception as e:  # orbax wraps OSErrors in its own (asyncio, tensorstore) exceptions
    if is_storage_failure(e):
      raise StorageError(f"{where}/{step}: {storage_message(e)}") from e
    raise


class Checkpointer:
  """Latest + best checkpoints of one run directory."""

  def __init__(self, directory: str | Path, asynchronous: bool = False):
    self.dir = Path(directory)
    self._wait_each = not asynchronous
    self._latest = _manager(self.dir / LATEST, asynchronous=asynchronous)
    self._best = _manager(self.dir / BEST, asynchronous=asynchronous)

  # ---------------------------------------------------------------- latest (resume)
  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save_latest(self, step: int, state: Any, meta: dict | None = None) -> None:
    params, rest = _split_params(state)
    items = dict(state=ocp.args.StandardSave(rest), meta=ocp.args.JsonSave(dict(meta or {}, step=step)))
    if params is not None:
      items["params"] = ocp.args.StandardSave(params)
    _wait(self._best, self.dir / BEST)  # see save_best
    _save(self._latest, step, ocp.args.Composite(**items), self.dir / LATEST, self._wait_each)

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
    _wait(self._best, self.dir / BEST)  # a step still being written cannot be read
    step = self._best.latest_step()
    if step is None:
      return None
    return dict(self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

  def save_best(self, step: int, params: Any, meta: dict | None = None) -> None:
    # One write at a time across latest/ and best/: with several processes orbax ends each
    # asynchronous write with a barrier named after the step alone, so two writes of one step (the
    # loop saves best/ and latest/ at an evaluation) collide ("barrier ... already ongoing").
    _wait(self._latest, self.dir / LATEST)
    _save(self._best, step, ocp.args.Composite(
        params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(dict(meta or {}, step=step))),
        self.dir / BEST, self._wait_each)

  def restore_params(self, abstract_params: Any, which: str = BEST) -> Any:
    """Parameters of the best (or latest) checkpoint."""
    if which not in (BEST, LATEST):
      raise ValueError(f"which must be {BEST!r} or {LATEST!r}, got {which!r}")
    mngr = self._best if which == BEST else self._latest
    _wait(mngr, self.dir / which)
    step = mngr.latest_step()
    if step is None:
      raise DataError(f"{self.dir / which}: no checkpoint; train first (or point to another run)")
    got = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(_abstract(abstract_params))))
    return got["params"]

  def wait(self) -> None:
    """Returns when every checkpoint saved so far is on disk."""
    _wait(self._latest, self.dir / LATEST)
    _wait(self._best, self.dir / BEST)

  def close(self) -> None:
    """Waits for the writes (`wait`), then releases the managers."""
    try:
      self.wait()
    finally:
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


def restore_module(ckpt_dir: str | Path, model: nnx.Module, which: str = BEST) -> nnx.Module:
  """Loads the parameters stored under `ckpt_dir` into `model` (an initialised nnx module of the
  right shapes) and returns it."""
  _, params = nnx.split(model)
  nnx.update(model, restore_params(ckpt_dir, params, which))
  return model


# ---------------------------------------------------------------------------- decoders
def save_decoder_files(run_dir: Path, model_cfg, vocab: Vocabulary, start_prior: dict | None) -> None:
  """The files besides the checkpoints that `load_decoder` and the sampler read."""
  if start_prior is not None:
    io.atomic_savez(run_dir / START_PRIOR_FILE, **start_prior)
  io.atomic_write_json(run_dir / MODEL_CONFIG_FILE, model_cfg.to_dict())
  vocab.save(run_dir / VOCAB_FILE)


def copy_decoder_files(src: Path, dst: Path) -> None:
  """A fine-tune's run directory gets its base run's model config, vocabulary and start prior."""
  for name in (MODEL_CONFIG_FILE, VOCAB_FILE, START_PRIOR_FILE):
    if (src / name).exists():
      io.atomic_write_bytes(dst / name, (src / name).read_bytes())


def model_config_from_json(path: str | Path) -> ml_collections.ConfigDict:
  """The model config a decoder run stored, completed with `LEGACY_MODEL_FIELDS` when older."""
  return ml_collections.ConfigDict(dict(LEGACY_MODEL_FIELDS, **json.loads(Path(path).read_text())))


def load_decoder(ckpt_dir: str | Path, which: str = BEST):
  """(graphdef, params, vocab, model_cfg) of a decoder run directory (pretrained or fine-tuned).

  `which` is "best" (lowest validation loss, or the final parameters of a fine-tune) or "latest".
  """
  ckpt_dir = Path(ckpt_dir)
  for name in (MODEL_CONFIG_FILE, VOCAB_FILE):
    if not (ckpt_dir / name).exists():
      raise DataError(f"{ckpt_dir}: no {name}; is this a decoder checkpoint directory written by pretrain?")
  vocab = Vocabulary.load(ckpt_dir / VOCAB_FILE)
  model_cfg = model_config_from_json(ckpt_dir / MODEL_CONFIG_FILE)
  graphdef, abstract = dec.abstract_decoder(model_cfg, len(vocab))
  params = restore_params(ckpt_dir, abstract, which=which)
  return graphdef, params, vocab, model_cfg


def load_baseline_files(ckpt_dir: str | Path, model: str) -> tuple[dict, Vocabulary, dict]:
  """(model.json, vocabulary, visit attributes) of a finished LSTM or HALO run directory."""
  ckpt_dir = Path(ckpt_dir)
  if not runs.is_done(ckpt_dir):
    raise DataError(f"{ckpt_dir}: no finished {model} run ({runs.RUN_FILE} missing or unfinished); "
                    "train it first")
  meta = json.loads((ckpt_dir / BASELINE_MODEL_FILE).read_text())
  if meta.get("model") != model:
    raise DataError(f"{ckpt_dir}: holds a {meta.get('model')!r} checkpoint, not {model!r}")
  return meta, Vocabulary.load(ckpt_dir / VOCAB_FILE), io.load_npz(ckpt_dir / BASELINE_ATTRIBUTES_FILE)


def load_start_prior(ckpt_dir: str | Path) -> dict | None:
  path = Path(ckpt_dir) / START_PRIOR_FILE
  return io.load_npz(path) if path.exists() else None
