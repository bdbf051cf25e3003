"""What each lever buys toward faithful rarity, on SCD (chronic) and AMI (acute): the paper's pair
rule first, then repeat pairs with several pairs per patient, stratum calibration (a target logit
bias per stratum, tuned on the modelling patients), and the rest (issue 29). Rows run in the
order listed, the likeliest levers first; a rerun skips finished rows.

  rltf sweep --config=configs/sweeps/rarity_levers.py [--workdir=DIR]

Every row shares the default run's data and base model; each writes `<cohort>-<row>/`.
"""

from rltf_jax.configs import base

COHORTS = ("scd", "ami")
# The rows before the default changed to one epoch fine-tuned for two (the earlier default).
TWO = {"rltf.epochs": 2}
REPEAT_X4 = {"rltf.positive_split": "any", "rltf.pairs_per_patient": 4, "rltf.num_pairs": 4_000}
ROWS = (
    ("paper", {**TWO, "rltf.calibrate": "none"}),
    ("repeat-x4", {**TWO, **REPEAT_X4, "rltf.calibrate": "none"}),
    ("repeat-x4-cal", {**TWO, **REPEAT_X4, "rltf.calibrate": "stratum"}),
    ("paper-cal", {**TWO, "rltf.calibrate": "stratum"}),
    ("paper-cal-ep1", {"rltf.calibrate": "stratum", "rltf.epochs": 1}),  # the default
    ("repeat", {**TWO, "rltf.positive_split": "any", "rltf.calibrate": "none"}),
    ("repeat-x4-lr", {**TWO, **REPEAT_X4, "rltf.lr": 2.5e-4, "rltf.calibrate": "none"}),
)


def get_config(arg=None):
  cfg = base.get_config(arg if arg in ("smoke", "paper") else None)
  cfg.methods = ("base", "rltf")
  return cfg


def get_sweep(arg=None):
  # The likeliest levers first (a sweep is resumable: a rerun skips finished rows).
  return [dict(name=f"{cohort}-{row}", run_name=f"lever-{row}", overrides=dict(overrides, cohort=cohort))
          for row, overrides in ROWS for cohort in COHORTS]
