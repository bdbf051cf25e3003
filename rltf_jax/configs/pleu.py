"""Pleurisy; Pneumothorax; Pulmonary Collapse (Pleu.): a rare cohort in the paper (0.516%)."""

from rltf_jax.configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="pleu")
