"""Errors a user can act on.

Library code raises these with a message that names the file, column, cohort or field at fault and
says what to do. Command-line entry points catch `RLTFError`, print the message and exit non-zero
(see `cli_main`), so a bad input never ends in a bare traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class RLTFError(Exception):
  """Base class for errors caused by the user's input or configuration."""


class DataError(RLTFError):
  """A data file or table is missing, malformed or inconsistent."""


class ConfigError(RLTFError):
  """A config field holds a value the code cannot use (unknown cohort, bad size, ...)."""


class BusyError(RLTFError):
  """Another live run holds the work directory's lock."""


class StorageError(RLTFError):
  """A file could not be written or read back (disk full, read-only or missing directory)."""


class TrainingError(RLTFError):
  """Training cannot continue (for example a NaN or Inf loss)."""


def storage_message(e: BaseException) -> str:
  """One line naming the path and the cause of a storage failure (an OSError, or one found in the
  exception's chain, as orbax wraps them)."""
  seen = e
  while seen is not None and not isinstance(seen, OSError):
    seen = seen.__cause__ or seen.__context__
  if isinstance(seen, OSError):
    where = seen.filename or "the work directory"
    return f"cannot write {where}: {seen.strerror or seen}; free space or choose a writable --workdir"
  text = str(e).splitlines()[0] if str(e) else type(e).__name__
  return f"storage failure: {text[:300]}"


def is_storage_failure(e: BaseException) -> bool:
  """Whether `e` (or an exception in its chain) is a storage failure."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) or "RESOURCE_EXHAUSTED" in str(seen) or "No space left" in str(seen):
      return True
    seen = seen.__cause__ or seen.__context__
  return False


def cli_main(fn: Callable[[], int | None]) -> None:
  """Runs `fn` and turns an `RLTFError` into a one-line message and exit status 2."""
  try:
    status = fn()
  except RLTFError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # disk full, read-only or vanished storage: the path and the cause
    print(f"error: {storage_message(e)}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
    sys.exit(130)
  sys.exit(status or 0)
