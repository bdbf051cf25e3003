"""The pretrained CHIRon-style decoder itself (the pipeline's base-model stage trains it)."""

from rltf_jax.methods import decoder_generator

LABEL = "Base (CHIRon-style)"


def train(ctx):
  return ctx.base_dir


def generator(ctx, ckpt):
  return decoder_generator.build(ctx.cfg, "base", ckpt)


def trained_on(ctx):
  return None  # the training split (the evaluation's default)


def describe(ctx):
  """What the report shows about its training data."""
  return {}
