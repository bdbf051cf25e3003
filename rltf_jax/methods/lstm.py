"""The LSTM baseline, trained on the evaluation's modelling set (as the paper's)."""

from rltf_jax.sampling.baseline_generators import LSTMGenerator
from rltf_jax.training import baselines

LABEL = "LSTM"


def train(ctx):
  return baselines.train_lstm(ctx.cfg, ctx.modelling, ctx.vocab, ctx.cohort_dir / "lstm")


def generator(ctx, ckpt):
  return LSTMGenerator.load(ckpt)


def trained_on(ctx):
  return ctx.plan.model_subject_id


def describe(ctx):
  """What the report shows about its training data."""
  return {}
