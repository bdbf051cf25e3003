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


class TrainingError(RLTFError):
  """Training cannot continue (for example a NaN or Inf loss)."""


def cli_main(fn: Callable[[], int | None]) -> None:
  """Runs `fn` and turns an `RLTFError` into a one-line message and exit status 2."""
  try:
    status = fn()
  except RLTFError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print("interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
    sys.exit(130)
  sys.exit(status or 0)
