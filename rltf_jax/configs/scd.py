"""Sickle-cell disease (SCD): the paper's rarest cohort (0.036%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="scd")
