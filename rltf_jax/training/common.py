"""Pieces every trainer shares: optimizer and mesh from config, metrics on disk, progress, NaN guard.

Generic over the train state (any pytree) and the metrics (any dict of scalars), so that the
pretraining, DPO, SFT, LSTM and HALO trainers all use the same ones.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rltf_jax.errors import ConfigError, TrainingError


# ---------------------------------------------------------------------------- optimizer
def make_schedule(lr: float, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.1):
  """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `total_steps`."""
  warmup = int(min(max(warmup_steps, 0), max(total_steps - 1, 0)))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=lr * min_lr_ratio)


def _decay_mask(params):
  """Weight decay on matrices only (not norms, biases or the age direction vector)."""
  return jax.tree.map(lambda x: getattr(x, "ndim", 0) >= 2, params)


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  """AdamW with warm-up + cosine decay and global-norm clipping, from a config section with
  fields lr, warmup_steps, min_lr_ratio, weight_decay, b1, b2, clip_norm (0 disables clipping)."""
  if opt_cfg.lr <= 0:
    raise ConfigError(f"learning rate must be positive, got {opt_cfg.lr}")
  schedule = make_schedule(opt_cfg.lr, total_steps, opt_cfg.warmup_steps, opt_cfg.get("min_lr_ratio", 0.1))
  parts = [optax.clip_by_global_norm(opt_cfg.clip_norm)] if opt_cfg.get("clip_norm", 0) else []
  parts.append(optax.adamw(schedule, b1=opt_cfg.get("b1", 0.9), b2=opt_cfg.get("b2", 0.95),
                           weight_decay=opt_cfg.get("weight_decay", 0.0), mask=_decay_mask))
  return optax.chain(*parts)


# ---------------------------------------------------------------------------- mesh and sharding
def make_mesh(mesh_cfg=None) -> Mesh:
  """A 1-D ("data",) mesh over the first `mesh_cfg.data` devices (0: all devices; default 1).

  Data parallelism is therefore a config change: `--config.mesh.data=4`.
  """
  n = int(mesh_cfg.data) if mesh_cfg is not None and "data" in mesh_cfg else 1
  devices = jax.devices()
  n = n or len(devices)
  if n > len(devices):
    raise ConfigError(f"mesh.data={n} but only {len(devices)} devices are visible "
                      "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
  return Mesh(np.asarray(devices[:n]), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"; other axes whole."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.shape["data"]
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of mesh.data")


# ---------------------------------------------------------------------------- metrics and progress
def to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Device scalars -> Python floats (one transfer for the whole dict)."""
  return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def check_finite(metrics: Mapping[str, float], step: int, *, keys=("loss", "grad_norm"),
                 checkpoint_note: str = "") -> None:
  """Raises `TrainingError` when any of `keys` is NaN or Inf."""
  bad = [k for k in keys if k in metrics and not math.isfinite(metrics[k])]
  if bad:
    what = ", ".join(f"{k}={metrics[k]}" for k in bad)
    raise TrainingError(f"training diverged at step {step} ({what}). {checkpoint_note}"
                        "Lower the learning rate or raise the warm-up, then rerun to resume.")


class MetricsWriter:
  """Appends one JSON object per line to `path` (each line written and flushed in one call)."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)

  def write(self, record: Mapping[str, Any]) -> None:
    line = json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=True) + "\n"
    with open(self.path, "a") as f:
      f.write(line)
      f.flush()


def _plain(v):
  if isinstance(v, (np.generic, np.ndarray)):
    return v.tolist()
  return v


def format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
  """A progress line: step, loss, tokens/s and ETA. Rates exclude the first (compiling) step."""

  def __init__(self, total_steps: int, *, name: str = "train", stream=None):
    self.total, self.name = total_steps, name
    self.stream = stream or sys.stdout
    self.t0 = None
    self.step0 = 0
    self.tokens = 0.0

  def count(self, step: int, tokens: float) -> None:
    """Records that step `step` (0-based) finished with `tokens` tokens."""
    if self.t0 is None:  # the first step seen includes compilation: start the clock after it
      self.t0, self.step0 = time.perf_counter(), step + 1
    else:
      self.tokens += tokens

  def pause(self, seconds: float) -> None:
    """Leaves `seconds` (evaluation, checkpointing) out of the rate and the ETA."""
    if self.t0 is not None:
      self.t0 += seconds

  def rates(self, step: int) -> tuple[float, float]:
    """(tokens/s, seconds left) after step `step`."""
    if self.t0 is None:
      return float("nan"), float("nan")
    done = step + 1 - self.step0
    elapsed = time.perf_counter() - self.t0
    if done <= 0 or elapsed <= 0:
      return float("nan"), float("nan")
    return self.tokens / elapsed, elapsed / done * (self.total - step - 1)

  def line(self, step: int, loss: float, extra: str = "") -> str:
    rate, eta = self.rates(step)
    text = (f"{self.name} step {step + 1}/{self.total} loss {loss:.4f} "
            f"tok/s {rate:,.0f} eta {format_seconds(eta)}{(' ' + extra) if extra else ''}")
    print(text, file=self.stream, flush=True)
    return text
