"""Stratum calibration of a generator: two logit biases on the target codes, one for prompts
without a target code (new onset) and one for prompts with one (repeat), each tuned so that the
generator writes the target, in the next T events, as often as the truth has it among the
*tuning* patients (design-weighted; no validation patient is among them).

The tuning patients (`tuning_patients`) are `cfg.calibration.patients` drawn, stratified by cohort
membership as the evaluation's are, from the eligible patients of the evaluation's split less its
validation patients: the modelling patients and the ones the evaluation did not draw. The
numerator of a calibration ratio is almost all non-members' small probabilities at large design
weights, a sum dominated by the few non-members the model scores high (on septicaemia the top 1%
hold a third of it), so a tuning set as small as the modelling patients (1,200 in the rare sweep)
misses the rate by +-25% by chance alone; non-members are plentiful, and a few thousand draws of
them (`cfg.calibration.samples` each: the spread between patients, not within, is what matters)
cost less than the modelling patients' K draws did.

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
from rltf_jax.data import enrich
from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import conditional, forecast
from rltf_jax.evaluation.plan import EvalPatients, evaluation_pool
from rltf_jax.runs import RunDir

log = logging.getLogger(__name__)

MODES = ("none", "stratum")
FILE = "calibration.json"


def tuning_patients(dataset: PatientEvents, patients: EvalPatients, target_codes, cfg_eval,
                    num: int, design=None) -> tuple[np.ndarray, np.ndarray]:
  """(dataset indices, design weights) of `num` tuning patients: the evaluation's pool (the
  eligible patients of its split, `plan.select_patients`) less its validation patients, drawn by
  `enrich.stratified_sample` within (member?, prior inclusion) cells. The validation patients left
  each cell at random, so a drawn patient's chance from its cell of the whole pool is taken / cell
  size: the weight divides by that, not by the share of what was left."""
  _, pool, _, member, prior = evaluation_pool(dataset, target_codes, cfg_eval, design)
  seed = int(cfg_eval.seed)
  rest = np.flatnonzero(~np.isin(dataset.subject_id[pool], patients.valid_subject_id))
  pick, inclusion = enrich.stratified_sample(prior[pool][rest], member[rest], int(num),
                                             float(cfg_eval.member_fraction), seed + 11)
  _, cell = np.unique(np.stack([member, prior[pool]], axis=1), axis=0, return_inverse=True)
  cell = cell.ravel()
  pool_size, rest_size = np.bincount(cell), np.bincount(cell[rest], minlength=cell.max() + 1)
  chosen = cell[rest[pick]]
  inclusion = inclusion * rest_size[chosen] / pool_size[chosen]
  return pool[rest[pick]], 1.0 / inclusion


def calibrate(generator, dataset: PatientEvents, patients: EvalPatients, target_codes, cfg_eval,
              cfg_calibration, out_dir: str | Path, key: dict, design=None) -> dict:
  """The generator's stratum biases from its masked draws on the tuning patients
  (`tuning_patients`), saved as `out_dir/calibration.json` (a RunDir: reused while `key` and the
  settings are the same)."""
  T, seed = int(cfg_eval.truncate_events), int(cfg_eval.seed)
  K, num = int(cfg_calibration.samples), int(cfg_calibration.patients)
  run = RunDir(out_dir, "calibration", dict(samples=K, patients=num, horizon=T, seed=seed,
                                            mode="stratum", tuning="unvalidated pool"), key)
  if run.done:
    return json.loads((Path(out_dir) / FILE).read_text())
  run.start()
  index, weights = tuning_patients(dataset, patients, target_codes, cfg_eval, num, design)
  prompts, true = conditional.truncate(dataset.select(index), T)
  truth, in_prompt = true.patients_with_any(target_codes), prompts.patients_with_any(target_codes)
  mass = generator.forecast(prompts, target_codes, horizon=T, samples=K, seed=seed + 7,
                            masked=True)["target_mass"]
  biases = forecast.stratum_biases(mass, truth, in_prompt, weights)
  modelling = np.isin(dataset.subject_id[index], patients.model_subject_id)
  record = dict(codes=list(target_codes), **biases, patients=int(len(index)),
                modelling_patients=int(modelling.sum()), samples=K,
                positives=dict(new_onset=int(truth[~in_prompt].sum()), repeat=int(truth[in_prompt].sum())),
                before=dict(new_onset=_ratio(mass, truth, weights, ~in_prompt, 0.0),
                            repeat=_ratio(mass, truth, weights, in_prompt, 0.0)))
  io.atomic_write_json(Path(out_dir) / FILE, record)
  run.finish()
  log.info("calibration: biases %s on %d tuning patients", biases, len(index))
  return record


def _ratio(mass, truth, weights, m, bias) -> float | None:
  wy = weights[m] @ truth[m]
  return float(weights[m] @ forecast.target_probability(mass[m], bias) / wy) if wy > 0 else None
