"""Every Table-4 cohort with every method: the paper's Tables 5, 6 and 7.

  rltf sweep --config=configs/sweeps/all_cohorts.py        # laptop size (hours)
  rltf sweep --config=configs/sweeps/all_cohorts.py:paper  # batch job

Runs use the cohort name as their directory (no suffix), so a cohort already run with
`launch.py --config=configs/<cohort>.py` is reused, not redone.
"""

from rltf_jax.configs import base, simulator


def get_config(arg=None):
  cfg = base.get_config(arg)
  cfg.methods = ("base", "rltf", "sft", "lstm", "halo")
  return cfg


def get_sweep(arg=None):
  return [dict(name=name, run_name="", overrides={"cohort": name})
          for name in simulator.TABLE4_PERCENT]
