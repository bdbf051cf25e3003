"""Gastrointestinal Hemorrhage (GI Hem.): a common cohort in the paper (1.517%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="gi_hem")
