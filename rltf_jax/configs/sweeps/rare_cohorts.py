"""The paper's seven rare cohorts at their true prevalence, over three training seeds: the
reproduction's evidence (RESULTS.md's Reproduction section).

  rltf sweep --config=configs/sweeps/rare_cohorts.py            # laptop size, hours
  rltf sweep --config=configs/sweeps/rare_cohorts.py:sft        # + SFT at seed 0
  rltf reproduce --results RESULTS.md                                         # the verdicts

The base model pretrains on the population at the paper's prevalences (the default run's data
and base model, reused); each cohort's pairs and evaluation come from the cohort-enriched sample
(`data.enrich`). For power the evaluation takes 4,000 patients (half of them cohort members) and
scores 70% of them: an acute cohort's members have the target in their last 20 events only about
a fifth of the time, so the default 600 validation patients would hold about 75 positive
continuations for septicaemia, against at least 150 asked for here. The enriched sample keeps
4,000 members per cohort (2,400 of them in the evaluation split) instead of the default 2,500, so
the sweep has its own data directory; the population and the base model are the default run's
(the base model's key ignores `data.enrich`). With 3,000 patients scored at half, the earlier
sweep held 91 to 142 positives for AMI, CVD, surgical complications and pleurisy. Runs go seed-major
(every cohort at seed 0 first) into `<cohort>-rare[-s<seed>]/`. Resumable: finished runs are
skipped on a rerun.
"""

from rltf_jax.configs import base

RARE = ("scd", "sep", "surg", "ami", "cvd", "pleu", "shock")


def get_config(arg=None):
  cfg = base.get_config(arg if arg in ("smoke", "paper") else None)
  # Base and RLTF over three seeds: 21 runs take about 2 hours on 2 cores (4-8 minutes each). `:sft` adds SFT at
  # seed 0 to the same run directories (the base model's evaluation is reused).
  cfg.methods = ("base", "sft") if arg == "sft" else ("base", "rltf")
  if cfg.size == "default":
    cfg.data.enrich.members_per_cohort = 4_000
  cfg.eval.num_test_patients = 4_000
  cfg.eval.model_fraction = 0.3
  # The forecast's K masked draws per patient set an evaluation's cost (4,000 patients x 8 draws:
  # ~4 of a run's ~8 minutes on 2 cores). Each draw's target probability is unbiased, so half the
  # draws keep every rate unbiased over 2,800 scored patients and cost 21 runs about an hour less.
  if cfg.size == "default":
    cfg.eval.forecast_samples = 4
  return cfg


def get_sweep(arg=None):
  return [dict(name=name, run_name="rare", overrides={"cohort": name}) for name in RARE]


def get_seeds(arg=None):
  return (0,) if arg == "sft" else (0, 1, 2)
