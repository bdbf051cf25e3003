"""Names that become parts of paths: a cohort's name, a run name, a method's name.

A cohort definition is a file a collaborator may share, and its `name` becomes the cohort's
directory (`<workdir>/<cohort>[-<run_name>]/`), its label file and its plots. A name is therefore
checked before any work starts: letters, digits, `_`, `-` and `.`, beginning with a letter or
digit, at most `MAX_LENGTH` characters, never `..` (so no path separator and no way up).
"""

from __future__ import annotations

import re

from rltf_jax.errors import ConfigError

MAX_LENGTH = 64
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_name(value, what: str) -> str:
  """`value` when it is a safe path component; else a one-line `ConfigError` naming `what`."""
  text = str(value)
  if not text or len(text) > MAX_LENGTH or not _SAFE.match(text) or ".." in text:
    raise ConfigError(f"{what} {text[:80]!r} cannot name a directory: use 1 to {MAX_LENGTH} "
                      "letters, digits, '_', '-' or '.', starting with a letter or digit (no '/', "
                      "'\\' or '..')")
  return text
