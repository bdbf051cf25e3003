"""Shock (Shock): a rare cohort in the paper (0.341%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="shock")
