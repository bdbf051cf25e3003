"""The paper's seven rare cohorts at their true prevalence, over three training seeds: the
reproduction's evidence (the README's Reproduction section).

  python -m rltf_jax.sweep --config=configs/sweeps/rare_cohorts.py            # laptop size, hours
  python -m rltf_jax.evaluation.reproduction --readme README.md               # the verdicts

The base model pretrains on the population at the paper's prevalences; each cohort's pairs and
evaluation come from the cohort-enriched sample (`data.enrich`), so every cohort has at least 150
positive continuations among its validation patients. Runs go seed-major (every cohort at seed 0
first); SCD at seed 0 is the default `launch.py --config=configs/scd.py` run, reused. Resumable:
finished runs are skipped on a rerun.
"""

from configs import base

RARE = ("scd", "sep", "surg", "ami", "cvd", "pleu", "shock")


def get_config(arg=None):
  cfg = base.get_config(arg)
  # Base and RLTF only: 21 runs of both take about 1.5-2 hours on 2 cores; SFT's comparison is
  # the default SCD run's (launch.py runs base, rltf and sft).
  cfg.methods = ("base", "rltf")
  return cfg


def get_sweep(arg=None):
  return [dict(name=name, run_name="", overrides={"cohort": name}) for name in RARE]


def get_seeds(arg=None):
  return (0, 1, 2)
