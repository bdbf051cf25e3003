"""Evaluates one generator on one cohort: every number of the paper's Tables 1, 3, 5, 6 and 7 for
that method, plus privacy and prevalence checks, written to `out_dir`.

The evaluation is an `EvalPlan` (`plan.py`: the patients, their weights and strata, the
modelling/validation split and one generation per patient), built once, and the evaluators found
by name in `cfg.eval.evaluators` (big_vision's `config.evals`): each is a module with
`evaluate(plan, results) -> (its part of metrics.json, its per-patient arrays)`, run in order
(memorization reads fidelity's ROUGE-1). See `EVALUATORS`.

`out_dir` after a run (all writes atomic; see the README for the full layout):
  metrics.json                 every number with its 95% bootstrap interval, the config, counts
  test_forecast.npz            the forecast's K draws (hits, per-step target mass)
  test_prompts.npz, test_true.npz, test_generated.npz      PatientEvents (`PatientEvents.load`)
  train_prompts.npz, train_true.npz, train_generated.npz   the same for the memorization check
  per_patient.npz              per test/train patient: target flags and ROUGE-1 (recompute fidelity)
  utility.npz                  count matrices, labels, subject ids (`utility.load_utility_data`)
  utility_uncut.npz            the same with the uncut generations as synthetic records
  prevalence.npz               per-code prevalence, real and synthetic (the scatter plot)

`out_dir` is a `rltf_jax.runs.RunDir`: its identity is the whole `cfg.eval` section, the dataset's and the
trained-on patients' fingerprints, the cohort, the method's name and whatever the caller adds
(`inputs`: the pipeline adds the model's run key and the sampling config). A finished evaluation
with the same identity is returned as it is, an unfinished one resumes (generations are cached),
and one with another identity is an error (never overwritten or reused).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from rltf_jax import io, runs
from rltf_jax.data.cohorts import Cohort, cohort_key, get_cohort
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError
from rltf_jax.evaluation import fidelity, forecast, memorization, prevalence, trajectories, utility
from rltf_jax.evaluation.plan import (EvalPatients, EvalPlan, build_plan, select_patients,  # noqa: F401
                                      select_trained_on, _subject_ids)
from rltf_jax.runs import RunDir

log = logging.getLogger(__name__)

METRICS_KIND = "rltf_jax.generator_eval"
# Part of an evaluation's identity: bump it when an evaluator's numbers change, so that a finished
# evaluation made by older code is refused (with a message) instead of reused.
METRICS_VERSION = 5  # 5: matched membership; 4: forecast (K draws); 3: design weights

# The evaluators, found by name (`cfg.eval.evaluators`); each module's `evaluate(plan, results)`.
EVALUATORS = dict(fidelity=fidelity, forecast=forecast, utility=utility, memorization=memorization,
                  prevalence=prevalence, trajectories=trajectories)  # trajectories: opt in (K x N draws)


def evaluator(name: str):
  if name not in EVALUATORS:
    raise ConfigError(f"eval.evaluators: unknown evaluator {name!r}; known: {', '.join(EVALUATORS)}")
  return EVALUATORS[name]


def _run_dir(out: Path, cfg, method: str, dataset, cohort: Cohort, trained_on, members, design,
             inputs) -> RunDir:
  """The evaluation's identity: the whole cfg.eval section and its inputs' fingerprints."""
  trained_ids = _subject_ids(trained_on)
  return RunDir(out, "eval", dict(settings=runs.plain(cfg), method=method, version=METRICS_VERSION), dict(
      inputs or {}, dataset=dataset.fingerprint(), cohort=runs.digest(cohort_key(cohort)),
      trained_on=runs.digest(None if trained_ids is None else trained_ids.tolist()),
      members=runs.digest(None if members is None else members.fingerprint()),
      **({} if design is None else dict(design=runs.digest(
          [design.eval_split, np.round(design.inclusion, 12).tolist()])))))


def evaluate_generator(generator, dataset: PatientEvents, cohort: Cohort | str, cfg,
                       out_dir: str | Path, *, trained_on=None,
                       members: PatientEvents | None = None, inputs: dict | None = None,
                       training: dict | None = None, design=None, base_forecast=None,
                       fits=None) -> dict:
  """Runs every evaluator of `cfg.eval.evaluators` on `generator` (see the module doc) and returns
  the metrics dict.

  `cfg` is `cfg.eval`. `trained_on` names the patients the method was trained on (subject ids, or
  a PatientEvents whose subject ids are used; they must be in `dataset`): the patients of its
  preference pairs for RLTF and SFT, the modelling set (`select_patients(...).model_subject_id`)
  for LSTM and HALO; None (default) means the training split, the base model's pretraining
  patients. Memorization is measured on them; they must not include a validation patient, on whom
  fidelity is scored. `members` overrides the membership attack's members (default: the trained-on
  patients). `training` (the caller's description of the method's training data) is stored as it
  is. `base_forecast`: the base model's `test_forecast.npz` on the same patients, from which the
  forecast's logit-bias anchor is tuned; `forecast.SELF` when `generator` is the base model; None
  where no base model is evaluated (no such anchor). `fits` (`utility.FitCache`): CatBoost fits
  to share with the other methods' evaluations of the same patients (the real, prompt-only and
  ceiling classifiers do not depend on the method); None fits everything anew.

  `design` (`rltf_jax.data.enrich.Design`; default: the test split, every patient weight 1) says
  which split the evaluated patients come from and their prior inclusion probabilities; every
  prevalence-dependent number is weighted by 1 / inclusion probability to estimate its population
  value, and the target's numbers are given unweighted too.
  """
  cohort = get_cohort(cohort) if isinstance(cohort, str) else cohort
  out = Path(out_dir)
  method = getattr(generator, "name", type(generator).__name__)
  chosen = [(name, evaluator(name)) for name in cfg.evaluators]
  run = _run_dir(out, cfg, method, dataset, cohort, trained_on, members, design, inputs)
  if run.done:
    log.info("%s: finished with the same identity; not recomputed", out)
    return json.loads((out / "metrics.json").read_text())
  run.start()
  t0 = time.perf_counter()
  plan = build_plan(generator, method, dataset, cohort, cfg, out, trained_on=trained_on,
                    members=members, design=design, base_forecast=base_forecast, fits=fits)
  results, arrays = {}, dict(test_subject_id=plan.test.subject_id, test_validation=plan.valid,
                             test_weight=plan.weights, test_true_events=plan.true.lengths,
                             test_generated_events=plan.generated.lengths)
  for name, module in chosen:
    t = time.perf_counter()
    part, part_arrays = module.evaluate(plan, results)
    results.update(part)
    arrays.update(part_arrays)
    plan.timing.setdefault(f"{name}_s", time.perf_counter() - t)
  io.atomic_savez(out / "per_patient.npz", **arrays)
  plan.timing["total_s"] = time.perf_counter() - t0
  result = _metrics(plan, results, training)
  io.atomic_write_json(out / "metrics.json", result)
  run.finish(seconds=plan.timing["total_s"])
  return result


def _metrics(plan: EvalPlan, results: dict, training: dict | None) -> dict:
  """metrics.json: who was evaluated, how, and every evaluator's numbers."""
  cohort, patients, wv = plan.cohort, plan.patients, plan.weights[plan.valid]
  generated, true, cut, T, max_new = plan.generated, plan.true, plan.cut, plan.T, int(plan.cfg.max_new_events)
  return dict(
      kind=METRICS_KIND, version=METRICS_VERSION, method=plan.method, cohort=cohort.name,
      cohort_abbrev=cohort.abbrev, cohort_definition=runs.plain(dataclasses.asdict(cohort)),
      cohort_acute=cohort.acute, settings=runs.plain(plan.cfg),
      design=dict(split=patients.counts["test"]["split"], weighted=bool(len(wv) and np.ptp(wv) > 0),
                  validation_weight_range=[float(wv.min()), float(wv.max())] if len(wv) else None,
                  validation_effective_patients=float(wv.sum() ** 2 / (wv ** 2).sum()) if len(wv) else 0.0),
      patients=dict(**patients.counts, train={k: v for k, v in plan.trained_counts.items()
                                              if k not in ("source", "patients")},
                    modelling=int(len(patients.model_subject_id)),
                    validation=int(len(patients.valid_subject_id)),
                    trained_on=dict(source=plan.trained_counts["source"],
                                    patients=plan.trained_counts["patients"])),
      generation=dict(
          mean_true_events=float(true.lengths.mean()), mean_generated_events=float(generated.lengths.mean()),
          mean_generated_events_length_matched=float(cut.lengths.mean()),
          shorter_than_true_fraction=float((generated.lengths < T).mean()),
          empty_generated_fraction=float((generated.lengths == 0).mean()),
          max_new_events_reached_fraction=float((generated.lengths >= max_new).mean())),
      **results, training=dict(training or {}),
      timing={k: round(v, 3) for k, v in plan.timing.items()})
