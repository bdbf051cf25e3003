"""Respiratory Failure; Insufficiency; Arrest Adult (Resp.): a common cohort in the paper (1.167%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="resp")
