"""The HALO baseline (Theodorou et al. 2023), trained on the evaluation's modelling set."""

from rltf_jax.sampling.baseline_generators import HALOGenerator
from rltf_jax.training import baselines

LABEL = "HALO"


def train(ctx):
  return baselines.train_halo(ctx.cfg, ctx.modelling, ctx.vocab, ctx.cohort, ctx.cohort_dir / "halo")


def generator(ctx, ckpt):
  return HALOGenerator.load(ckpt)


def trained_on(ctx):
  return ctx.plan.model_subject_id


def describe(ctx):
  """What the report shows about its training data."""
  return {}
