"""Pneumonia Except That Caused By Tuberculosis Or Sexually Transmitted Disease (Pneu.): a common cohort in the paper (1.611%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="pneu")
