"""Acute And Unspecified Renal Failure (Renal.): a common cohort in the paper (1.319%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="renal")
