"""Stratum calibration of a generator: two logit biases on the target codes, one for prompts
without a target code (new onset) and one for prompts with one (repeat), each tuned so that the
generator writes the target, in the next T events, as often as the truth has it among the
evaluation's *modelling* patients (design-weighted; no validation patient is among them).

A fine-tune moves *for whom* the model writes the target; this moves *how often*, per stratum,
with two numbers that are fitted where nothing is scored. The bias leaves the masked draws
unchanged (`rltf_jax.sampling.sampler`), so both are exact from one set of the model's own masked
draws (`forecast.target_probability`). The forecast's `stratum_bias` anchor does the same to the
base model: what stratum calibration buys with no training.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from rltf_jax import io
from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import conditional, forecast
from rltf_jax.evaluation.plan import EvalPatients
from rltf_jax.runs import RunDir

log = logging.getLogger(__name__)

MODES = ("none", "stratum")
FILE = "calibration.json"


def calibrate(generator, dataset: PatientEvents, patients: EvalPatients, target_codes, cfg_eval,
              out_dir: str | Path, key: dict) -> dict:
  """The generator's stratum biases from its masked draws on the modelling patients, saved as
  `out_dir/calibration.json` (a RunDir: reused while `key` and the settings are the same)."""
  T, K, seed = int(cfg_eval.truncate_events), int(cfg_eval.forecast_samples), int(cfg_eval.seed)
  run = RunDir(out_dir, "calibration", dict(samples=K, horizon=T, seed=seed, mode="stratum"), key)
  if run.done:
    return json.loads((Path(out_dir) / FILE).read_text())
  run.start()
  test = dataset.select(patients.test)
  model = np.isin(test.subject_id, patients.model_subject_id)
  prompts, true = conditional.truncate(test.select(np.flatnonzero(model)), T)
  truth, in_prompt = true.patients_with_any(target_codes), prompts.patients_with_any(target_codes)
  mass = generator.forecast(prompts, target_codes, horizon=T, samples=K, seed=seed + 7,
                            masked=True)["target_mass"]
  weights = patients.weights[model]
  biases = forecast.stratum_biases(mass, truth, in_prompt, weights)
  record = dict(codes=list(target_codes), **biases, patients=int(model.sum()),
                positives=dict(new_onset=int(truth[~in_prompt].sum()), repeat=int(truth[in_prompt].sum())),
                before=dict(new_onset=_ratio(mass, truth, weights, ~in_prompt, 0.0),
                            repeat=_ratio(mass, truth, weights, in_prompt, 0.0)))
  io.atomic_write_json(Path(out_dir) / FILE, record)
  run.finish()
  log.info("calibration: biases %s on %d modelling patients", biases, int(model.sum()))
  return record


def _ratio(mass, truth, weights, m, bias) -> float | None:
  wy = weights[m] @ truth[m]
  return float(weights[m] @ forecast.target_probability(mass[m], bias) / wy) if wy > 0 else None
