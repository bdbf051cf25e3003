"""SFT: the base decoder fine-tuned with the language-model loss on the pairs' chosen sequences."""

import numpy as np

from rltf_jax.methods import decoder_generator
from rltf_jax.training import finetune, preference, sft

LABEL = "SFT"


def train(ctx):
  return sft.finetune_sft(ctx.cfg, ctx.base_dir, ctx.pairs, ctx.cohort_dir / "sft")


def generator(ctx, ckpt):
  return decoder_generator.build(ctx.cfg, "sft", ckpt)


def trained_on(ctx):
  return np.unique(ctx.pairs.subject_id)


def describe(ctx):
  """What the report shows about its training data, and its DP accounting (`dp.json`)."""
  return dict(preference.pair_counts(ctx.pairs), dp=finetune.dp_info(ctx.cohort_dir / "sft"))
