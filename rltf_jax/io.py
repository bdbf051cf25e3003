"""Atomic file writes: a reader never sees a half-written artifact.

Every artifact goes to a temporary name in the destination directory and is renamed into place
(`os.replace` is atomic on POSIX within one file system). A crash leaves either the old file or the
new one, plus at worst a stray `*.tmp-*` that the next write ignores.

Of a multi-process job (`jax.distributed`), process 0 alone writes: the others run the same code in
lockstep and would write the same bytes, so their writes are skipped, and a barrier
(`training.mesh.sync`) stands between a write and another process's read of it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np


def _tmp_path(path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
  os.close(fd)
  return Path(tmp)


def writes_files() -> bool:
  """False on every process of a multi-process job but process 0 (see the module docstring)."""
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  path = Path(path)
  if not writes_files():
    return path
  tmp = _tmp_path(path)
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
  return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
  return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, Path):
    return str(x)
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
  """`np.savez_compressed`, written atomically. Object arrays are refused (no pickles on disk)."""
  buf = io.BytesIO()
  np.savez_compressed(buf, **arrays)
  return atomic_write_bytes(path, buf.getvalue())


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
  """Yields a temporary directory that becomes `path` only if the block finishes.

  An existing `path` is an error unless `overwrite` is set: finished work is never silently
  replaced.
  """
  path = Path(path)
  if path.exists() and not overwrite:
    raise FileExistsError(f"{path} already exists; remove it or choose another output directory")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
  try:
    yield tmp
    if path.exists():
      shutil.rmtree(path)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
