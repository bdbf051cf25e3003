"""Acute Myocardial Infarction (AMI): a rare cohort in the paper (0.524%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="ami")
