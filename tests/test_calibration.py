"""Stratum calibration's tuning patients (rltf_jax.evaluation.calibration.tuning_patients)."""

import numpy as np
import pytest

from rltf_jax.data import enrich
from rltf_jax.data.cohorts import get_cohort
from rltf_jax.evaluation import calibration, conditional, evaluate
from test_eval_report import eval_config
from test_eval_utility import toy_dataset


@pytest.mark.parametrize("num", [60, 10_000])  # a draw from each cell, and every patient left
def test_tuning_patients_avoid_validation_and_weigh_up_to_the_pool(num):
  ds = toy_dataset(600, seed=3)
  codes = get_cohort("scd").codes
  member = ds.patients_with_any(codes)
  # An enriched design: members kept at 0.5, non-members at 0.01 or 0.02 (two cells).
  prior = np.where(member, 0.5, np.where(np.arange(ds.num_patients) % 3 == 0, 0.02, 0.01))
  design = enrich.Design(pairs_split="train", eval_split="test", inclusion=prior, enriched=True)
  cfg = eval_config(num_test_patients=120)
  patients = evaluate.select_patients(ds, "scd", cfg, design)
  index, weights = calibration.tuning_patients(ds, patients, codes, cfg, num, design)

  pool, _ = conditional.sample_patients(ds, "test", 0, cfg.seed, cfg.truncate_events, cfg.min_prompt_events)
  assert set(index) <= set(pool) and len(set(index)) == len(index)
  assert not set(ds.subject_id[index]) & set(patients.valid_subject_id)  # nothing scored is tuned on
  assert set(ds.subject_id[index]) & set(patients.model_subject_id)  # the modelling ones may be
  # Within each (member?, prior) cell the draw stands for the whole pool, validation patients
  # included: the weights add up to the pool's design weights, exactly, members and others.
  for m in (True, False):
    assert weights[member[index] == m].sum() == pytest.approx(
        (1 / prior[pool][member[pool] == m]).sum(), rel=1e-9)
  if num < len(pool):
    assert len(index) == num
