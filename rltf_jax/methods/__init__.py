"""Generators found by name, as big_vision finds models: method `x` is the module
`rltf_jax.methods.x`, so adding a generator is adding a file.

Each module defines
  LABEL                  how reports name it;
  train(ctx) -> Path     trains it (resuming, or reusing a finished run) and returns its run
                         directory; `ctx` is the pipeline's `Context` (config, data, cohort, base
                         model, preference pairs, the evaluation's patients);
  generator(ctx, ckpt)   the `rltf_jax.generator.Generator` the evaluation samples from;
  trained_on(ctx)        the subject ids it was trained on (None: the training split), which the
                         evaluation keeps out of fidelity and uses for memorization;
  describe(ctx) -> dict  what reports show about its training data (the pairs' counts).

`ORDER` is the one place the order of methods (in a run and in every table) is written.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rltf_jax.errors import ConfigError
from rltf_jax.names import check_name

ORDER = ("base", "rltf", "sft", "lstm", "halo")


def get(name: str) -> ModuleType:
  """The module of method `name`; a `ConfigError` names the known ones when there is none."""
  check_name(name, "method")  # a method's name is a directory name (and a module's)
  try:
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise ConfigError(f"config.methods has unknown {name!r}; choose from {ORDER}") from None


def label(name: str) -> str:
  try:
    return get(name).LABEL
  except ConfigError:
    return name


def sort_key(name: str) -> tuple[int, str]:
  """Known methods in `ORDER`, others after them by name."""
  return (ORDER.index(name) if name in ORDER else len(ORDER), name)
