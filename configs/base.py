"""Shared base config: every cohort config is this with `cohort` set.

Config arguments, big_vision style (`--config=configs/scd.py:smoke`):
  (none)   default size: the whole pipeline for one cohort on a 2-core laptop CPU;
  smoke    tiny everything, for tests (about a minute end to end);
  paper    the paper's settings (N = 10000 pairs, batch 8, 6 epochs, ...) for a GPU/TPU batch job.
Any field can be overridden on the command line, e.g. `--config.rltf.beta=0.2`.
"""

import ml_collections


def get_config(arg: str | None = None, cohort: str = "scd") -> ml_collections.ConfigDict:
  size = arg or "default"
  if size not in ("default", "smoke", "paper"):
    raise ValueError(f"config argument must be empty, 'smoke' or 'paper', got {arg!r}")
  smoke, paper = size == "smoke", size == "paper"

  cfg = ml_collections.ConfigDict()
  cfg.size = size
  cfg.cohort = cohort
  cfg.seed = 0
  cfg.workdir = ""  # empty: runs/<cohort>-<size> (launch.py --workdir overrides)
  cfg.methods = ("base", "rltf", "sft")  # also "lstm", "halo"

  # ---------------------------------------------------------------- data
  cfg.data = ml_collections.ConfigDict()
  cfg.data.source = "simulator"  # "simulator" | "meds" | "mimic"
  cfg.data.path = ""             # MEDS or MIMIC-IV directory for real data
  cfg.data.bare_code_system = "ICD10CM"  # how prefix-less codes in MEDS are read ("" keeps them as OTHER/)
  cfg.data.num_patients = 2_000 if smoke else (1_000_000 if paper else 20_000)
  cfg.data.seed = 0
  cfg.data.split_fractions = (0.8, 0.1, 0.1)  # train / valid / test, by patient
  cfg.data.split_seed = 0
  cfg.data.vocab_min_count = 1 if smoke else 5
  from rltf_jax.data import simulate  # the simulator's parameters live in config too
  cfg.data.simulator = simulate.default_config()

  return cfg
