"""One cohort over six training seeds: how much of a single run is the base model's seed?

  rltf sweep --config=configs/sweeps/seeds.py            # SCD, laptop size (~30 min)
  rltf sweep --config=configs/sweeps/seeds.py:ami        # another cohort
  rltf sweep --config=configs/sweeps/seeds.py:scd,smoke  # cohort, size
  rltf sweep --config=configs/sweeps/seeds.py --seeds=0,1,2

Seed 0 is the cohort's own run (`launch.py --config=configs/<cohort>.py` output is reused); the
table ends with the mean and standard deviation over seeds.
"""

from rltf_jax.configs import base


def _parse(arg):
  cohort, _, size = (arg or "scd").partition(",")
  return cohort or "scd", size or None


def get_config(arg=None):
  cohort, size = _parse(arg)
  return base.get_config(size, cohort=cohort)


def get_sweep(arg=None):
  return [dict(name=_parse(arg)[0], run_name="", overrides={})]


def get_seeds(arg=None):
  return (0, 1, 2, 3, 4, 5)
