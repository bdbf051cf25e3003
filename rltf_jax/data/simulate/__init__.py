"""The synthetic claims simulator, one job per module.

  story.py        the generative story: `simulate(cfg, num_patients, seed)` -> PatientEvents, the
                  config check and the laptop-size cohort floor (`raise_rare_cohorts`)
  catalog.py      which codes each condition writes, and the code tables derived from it
  diagnostics.py  a draw's checkable properties, per-cohort CatBoost AUROCs, the text report
  cli.py          the command line (`python -m rltf_jax.data.simulate`, via `__main__.py`)

Every numeric parameter is in configs/simulator.py (`cfg.data.simulator`). The story's entry
points are re-exported here, so `simulate.simulate(cfg, n, seed)` reads as before.
"""

from rltf_jax.data.simulate.story import raise_rare_cohorts, simulate, validate_config

__all__ = ["raise_rare_cohorts", "simulate", "validate_config"]
