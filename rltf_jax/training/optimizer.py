"""The optimiser every decoder trainer uses (pretraining, DPO, SFT), from a config section."""

from __future__ import annotations

import jax
import optax

from rltf_jax.errors import ConfigError


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
  if not opt_cfg.lr > 0:  # also refuses NaN
    raise ConfigError(f"learning rate must be positive, got {opt_cfg.lr}")
  schedule = make_schedule(opt_cfg.lr, total_steps, opt_cfg.warmup_steps, opt_cfg.min_lr_ratio)
  parts = [optax.clip_by_global_norm(opt_cfg.clip_norm)] if opt_cfg.clip_norm else []
  parts.append(optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, weight_decay=opt_cfg.weight_decay,
                           mask=_decay_mask))
  return optax.chain(*parts)
