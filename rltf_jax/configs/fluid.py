"""Fluid And Electrolyte Disorders (Fluid.): a common cohort in the paper (21.5%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="fluid")
