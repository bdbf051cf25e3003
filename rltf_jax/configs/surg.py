"""Complications Of Surgical Procedures Or Medical Care (Surg.): a rare cohort in the paper (0.64%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="surg")
