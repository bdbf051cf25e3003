"""Diabetes Mellitus Without Complication (DM): a common cohort in the paper (11.13%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="dm")
