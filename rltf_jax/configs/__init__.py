"""The experiment configs, shipped with the package: `base.py` (every field, one line each),
`simulator.py` (the synthetic claims simulator), one file per cohort, `sweeps/` (a paper table
is one sweep). The repository's `configs/` holds shims, so `--config=configs/scd.py` works from a
clone; from anywhere, name a packaged config (`scd`, `scd:smoke`, `sweeps/rare_cohorts:sft`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def resolve(spec: str) -> str:
  """`path[:arg]` as given when `path` is a file; else a packaged config's name (`scd`,
  `sweeps/rare_cohorts`, with or without `.py`) -> its path, with the same `:arg`."""
  path, sep, arg = spec.partition(":")
  if Path(path).is_file():
    return spec
  name = path[:-3] if path.endswith(".py") else path
  name = name.removeprefix("configs/")  # a clone's shim path, run from another directory
  packaged = PACKAGE_DIR / f"{name}.py"
  if name and not name.startswith("_") and packaged.is_file():
    return f"{packaged}{sep}{arg}"
  return spec


def load_module(path: str, prefix: str = "config"):
  """Imports a config file by path (as `ml_collections.config_flags` does)."""
  module_spec = importlib.util.spec_from_file_location(f"{prefix}_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str):
  """The config of `path[:arg]` (or a packaged name, see `resolve`), as launch.py reads it."""
  path, _, arg = resolve(spec).partition(":")
  return load_module(path).get_config(arg or None)
