"""RLTF: DPO-Positive fine-tuning of the base decoder on the cohort's preference pairs."""

import numpy as np

from rltf_jax.methods import decoder_generator
from rltf_jax.training import dpo, finetune, preference

LABEL = "RLTF (DPO-Positive)"


def train(ctx):
  return dpo.finetune_dpo(ctx.cfg, ctx.base_dir, ctx.pairs, ctx.cohort_dir / "rltf")


def generator(ctx, ckpt):
  return decoder_generator.build(ctx.cfg, "rltf", ckpt)


def trained_on(ctx):
  return np.unique(ctx.pairs.subject_id)


def describe(ctx):
  """What the report shows about its training data, and its DP accounting (`dp.json`)."""
  return dict(preference.pair_counts(ctx.pairs), dp=finetune.dp_info(ctx.cohort_dir / "rltf"))
