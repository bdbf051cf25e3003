"""Conduction Disorders (Cond.): a common cohort in the paper (1.767%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="cond")
