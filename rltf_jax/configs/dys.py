"""Cardiac Dysrhythmias (Dys.): a common cohort in the paper (6.643%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="dys")
