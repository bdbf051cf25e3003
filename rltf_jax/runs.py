"""One run identity for every stage: a directory, what its outputs depend on, and whether it is done.

A stage's outputs (a dataset, a checkpoint, preference pairs, an evaluation, the generations it
caches) depend on some config fields and on its inputs, each of which is another stage's output
or a dataset. `RunDir` writes both, with their hash (the run's `key`), to `run.json` when the work
starts, and marks the file finished when the work ends:

- a directory without `run.json` is new: the work starts there;
- a `run.json` with the same key is the same run: finished work is reused, unfinished work is
  resumed (trainers from their last checkpoint);
- a `run.json` with another key is another run: a `ConfigError` says what differs, and nothing is
  touched (use another work directory or delete that one).

A stage's key goes into the identity of every stage that uses its output, so a change anywhere
upstream (the data, the pretraining config, the pairs) changes the key of everything downstream:
a stale evaluation can never be reused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from rltf_jax import io
from rltf_jax.errors import BusyError, ConfigError

RUN_FILE = "run.json"
LOCK_FILE = ".lock"


def plain(x: Any) -> Any:
  """ConfigDicts, tuples and numpy scalars as JSON-ready values (stable for hashing)."""
  if hasattr(x, "to_dict"):
    return plain(x.to_dict())
  if isinstance(x, Mapping):
    return {str(k): plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [plain(v) for v in x]
  if hasattr(x, "item") and getattr(x, "shape", None) == ():
    return x.item()
  if isinstance(x, Path):
    return str(x)
  return x


def digest(*parts: Any) -> str:
  """Short stable hash of config sections, dicts and scalars."""
  blob = json.dumps([plain(p) for p in parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


class RunDir:
  """A stage's directory and identity (see the module docstring).

  `kind` names the stage ("data", "pretrain", "rltf", "eval", ...), `config` holds the config
  fields its outputs depend on, and `inputs` maps each input's name to its fingerprint (an
  upstream run's `key`, a dataset's or a vocabulary's fingerprint).
  """

  def __init__(self, path: str | Path, kind: str, config: Any = None,
               inputs: Mapping[str, str] | None = None):
    self.path = Path(path)
    self.identity = dict(kind=kind, config=plain(config or {}), inputs=dict(sorted((inputs or {}).items())))
    self.key = digest(self.identity)

  @property
  def kind(self) -> str:
    return self.identity["kind"]

  @property
  def file(self) -> Path:
    return self.path / RUN_FILE

  def record(self) -> dict | None:
    """The `run.json` of this directory (any run's), or None."""
    if not self.file.exists():
      return None
    try:
      return json.loads(self.file.read_text())
    except (OSError, ValueError) as e:
      raise ConfigError(f"{self.file}: unreadable run record ({e}); delete {self.path} to redo it") from e

  def _check(self, rec: dict) -> None:
    if rec.get("key") == self.key:
      return
    old = rec.get("identity", {})
    changed = sorted({*_diff(old.get("config", {}), self.identity["config"], "config"),
                      *_diff(old.get("inputs", {}), self.identity["inputs"], "input")})
    what = ", ".join(changed[:6]) + (" ..." if len(changed) > 6 else "") if changed else "its kind"
    raise ConfigError(
        f"{self.path} holds a {old.get('kind', '?')} run made with other parameters, other data or "
        f"settings than this one (the other settings or inputs: {what}); use another --workdir or "
        "delete that directory")

  @property
  def done(self) -> bool:
    """True when this run finished here; raises `ConfigError` when another run owns the directory."""
    rec = self.record()
    if rec is None:
      return False
    self._check(rec)
    return rec.get("finished") is not None

  def regenerate(self) -> bool:
    """For derived outputs that are rebuilt whole (the report): True when a finished run with this
    identity is there; otherwise any other record is dropped, so that `start` begins afresh."""
    rec = self.record()
    if rec is not None and rec.get("key") == self.key and rec.get("finished") is not None:
      return False
    if io.writes_files():  # of several processes, process 0 alone (`rltf_jax.io`)
      self.file.unlink(missing_ok=True)
    return True

  def start(self) -> "RunDir":
    """Creates the directory and records the identity (once); refuses another run's directory."""
    rec = self.record()
    if rec is not None:
      self._check(rec)
      return self
    self.path.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(self.file, dict(key=self.key, identity=self.identity, started=time.time(),
                                         finished=None))
    return self

  def finish(self, **info: Any) -> None:
    """Marks the run finished, with `info` (seconds, counts, final metrics) kept beside it."""
    rec = self.record() or dict(key=self.key, identity=self.identity, started=time.time())
    self._check(rec)
    io.atomic_write_json(self.file, dict(rec, finished=time.time(), info=plain(info)))

  @property
  def info(self) -> dict:
    """What `finish` recorded (empty before)."""
    rec = self.record()
    return dict(rec.get("info") or {}) if rec else {}


@contextlib.contextmanager
def workdir_lock(root: str | Path) -> Iterator[None]:
  """Holds an exclusive lock on the work directory `root` for the length of a run, so that two runs
  never write into one directory. A second run gets a `BusyError` naming the holder. The lock is
  the kernel's (`flock`): it ends with the process that holds it, so a killed run leaves no stale
  lock behind (the `.lock` file itself stays, empty of meaning). Of a multi-process job, process 0
  alone holds it: the others run in lockstep under it and write nothing (`rltf_jax.io`)."""
  root = Path(root)
  if not io.writes_files():
    yield
    return
  try:
    root.mkdir(parents=True, exist_ok=True)
    f = open(root / LOCK_FILE, "a+")
  except OSError:
    # Read-only storage: nothing can be written there, so nothing can be corrupted; a finished
    # run still reads back and prints its report's path.
    if not (root / LOCK_FILE).exists():
      yield
      return
    f = open(root / LOCK_FILE)
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "another process"
    f.close()
    raise BusyError(f"{root} is in use by another run ({holder}); wait for it to finish or use "
                    "another --workdir") from None
  try:
    if f.writable():
      f.seek(0)
      f.truncate()
      f.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
      f.flush()
    yield
  finally:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def is_done(path: str | Path) -> bool:
  """Whether `path` holds a finished run of any identity."""
  f = Path(path) / RUN_FILE
  return f.exists() and json.loads(f.read_text()).get("finished") is not None


def _diff(old: Any, new: Any, prefix: str) -> list[str]:
  """Dotted names of the leaves that differ between two plain trees."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      out += _diff(old.get(k), new.get(k), f"{prefix}.{k}")
    return out
  return [] if old == new else [prefix]


def finished_key(path: str | Path) -> str:
  """The key of the finished run in `path` (what a downstream stage lists among its inputs)."""
  f = Path(path) / RUN_FILE
  rec = json.loads(f.read_text()) if f.exists() else {}
  if rec.get("finished") is None:
    raise ConfigError(f"{path}: no finished run ({RUN_FILE} missing or unfinished)")
  return rec["key"]
