"""The synthetic claims simulator, one job per module.

  story.py        the generative story: `simulate(cfg, num_patients, seed)` -> PatientEvents, the
                  config check and the laptop-size cohort floor (`raise_rare_cohorts`)
  catalog.py      which codes each condition writes, and the code tables derived from it

A draw's checkable properties, per-cohort CatBoost AUROCs and the text report are
`rltf_jax/evaluation/simulator_calibration.py` (it measures AUROCs the evaluation's way); the
command line is `rltf simulate` (`rltf_jax/commands/simulate.py`).

Every numeric parameter is in rltf_jax/configs/simulator.py (`cfg.data.simulator`). The story's entry
points are re-exported here, so `simulate.simulate(cfg, n, seed)` reads as before.
"""

from rltf_jax.data.simulate.story import raise_rare_cohorts, simulate, validate_config

__all__ = ["raise_rare_cohorts", "simulate", "validate_config"]
