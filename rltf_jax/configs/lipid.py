"""Disorders Of Lipid Metabolism (Lipid.): a common cohort in the paper (4.857%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="lipid")
