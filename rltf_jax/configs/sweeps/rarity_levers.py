"""What each pair lever buys toward faithful rarity, on SCD (chronic) and AMI (acute): the paper's
pair rule first, then repeat pairs, several pairs per patient and a longer fine-tune (issue 29).

  rltf sweep --config=configs/sweeps/rarity_levers.py [--workdir=DIR]

Every row shares the default run's data and base model; each writes `<cohort>-<row>/`.
"""

from rltf_jax.configs import base

COHORTS = ("scd", "ami")
ROWS = (
    ("paper", {}),
    ("repeat", {"rltf.positive_split": "any"}),
    ("repeat-x4", {"rltf.positive_split": "any", "rltf.pairs_per_patient": 4, "rltf.num_pairs": 4_000}),
    ("repeat-x4-lr", {"rltf.positive_split": "any", "rltf.pairs_per_patient": 4,
                      "rltf.num_pairs": 4_000, "rltf.lr": 2.5e-4}),
)


def get_config(arg=None):
  cfg = base.get_config(arg if arg in ("smoke", "paper") else None)
  cfg.methods = ("base", "rltf")
  return cfg


def get_sweep(arg=None):
  # The likeliest levers first (a sweep is resumable: a rerun skips finished rows).
  order = ("paper", "repeat-x4", "repeat", "repeat-x4-lr")
  rows = sorted(ROWS, key=lambda r: order.index(r[0]))
  return [dict(name=f"{cohort}-{row}", run_name=f"lever-{row}", overrides=dict(overrides, cohort=cohort))
          for row, overrides in rows for cohort in COHORTS]
