"""Shock (Shock): a rare cohort in the paper (0.341%)."""

from configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="shock")
