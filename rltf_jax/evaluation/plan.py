"""What an evaluation scores: the patients (`select_patients`, `select_trained_on`) and the
`EvalPlan` every evaluator reads, built once per cohort and method (`build_plan`).

Who is scored on what: every evaluated patient is completed once (the generations are cached in
the evaluation's folder). Fidelity, forecast, prevalence and the test side of memorization use the
*validation* part of the modelling/validation split, which no method trains on (LSTM and HALO
train on the modelling part); utility trains on the modelling part and scores on the validation
part; memorization's training side uses the patients the method was trained on (`trained_on`).
Primary numbers are length-matched (a generation cut to its first T events, T = the true
continuation's length).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path

import numpy as np

from rltf_jax.data import enrich
from rltf_jax.data.cohorts import Cohort, get_cohort
from rltf_jax.data.events import SPLITS, PatientEvents
from rltf_jax.errors import DataError
from rltf_jax.evaluation import conditional, utility

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalPatients:
  """Which patients the evaluation uses: fixed by the data, the cohort, the design and cfg.eval
  only, so every method of a run sees the same ones (and LSTM/HALO can be trained on the
  modelling set)."""
  test: np.ndarray            # indices into the dataset (eval split, long enough), sorted
  inclusion: np.ndarray       # float64 [len(test)]: each one's inclusion probability (population)
  model_subject_id: np.ndarray
  valid_subject_id: np.ndarray
  stratified: bool
  counts: dict

  @property
  def weights(self) -> np.ndarray:
    """1 / inclusion probability: what each evaluated patient stands for in the population."""
    return 1.0 / self.inclusion


def evaluation_pool(dataset: PatientEvents, target_codes, cfg, design=None):
  """(split, pool, its counts, member? per pool patient, prior inclusion of every patient): the
  eligible patients of the design's evaluation split (default the test split) that the evaluation
  and the calibration's tuning set draw from."""
  T, min_prompt, seed = int(cfg.truncate_events), int(cfg.min_prompt_events), int(cfg.seed)
  split = design.eval_split if design is not None else "test"
  prior = design.inclusion if design is not None else np.ones(dataset.num_patients)
  pool, counts = conditional.sample_patients(dataset, split, 0, seed, T, min_prompt)
  return split, pool, counts, dataset.select(pool).patients_with_any(target_codes), prior


def select_patients(dataset: PatientEvents, cohort: Cohort | str, cfg, design=None) -> EvalPatients:
  """Draws the evaluated patients and their modelling/validation split (the training patients of
  memorization are `select_trained_on`'s).

  From the long-enough patients of the design's evaluation split (`rltf_jax.data.enrich`; default
  the test split), `cfg.num_test_patients` are drawn stratified by cohort membership: members
  first, at most `cfg.member_fraction` of them (`enrich.stratified_sample`). Each patient's
  inclusion probability (the design's prior times this draw's) is kept: the weights that make
  prevalence-dependent numbers estimate the population's values. The split is stratified by
  membership at `cfg.model_fraction` in both strata, so it changes no weight."""
  cohort = get_cohort(cohort) if isinstance(cohort, str) else cohort
  seed = int(cfg.seed)
  split, pool, pool_counts, member, prior = evaluation_pool(dataset, cohort.codes, cfg, design)
  pick, inclusion = enrich.stratified_sample(prior[pool], member, int(cfg.num_test_patients),
                                             float(cfg.member_fraction), seed)
  test = pool[pick]
  labels = member[pick]
  model, valid, stratified = utility.model_validation_split(labels, float(cfg.model_fraction), seed)
  counts = dict(test=dict(split=split, split_patients=pool_counts["split_patients"],
                          too_short=pool_counts["too_short"], eligible=int(len(pool)),
                          eligible_members=int(member.sum()), selected=int(len(test)),
                          selected_members=int(labels.sum())),
                test_positive=int(labels.sum()),
                population_member_estimate=float((labels / inclusion).sum() / (1 / inclusion).sum()))
  return EvalPatients(test=test, inclusion=inclusion, model_subject_id=dataset.subject_id[test][model],
                      valid_subject_id=dataset.subject_id[test][valid], stratified=stratified,
                      counts=counts)


def _subject_ids(patients) -> np.ndarray | None:
  """Subject ids (int64) of `patients`: a PatientEvents, an array of subject ids, or None."""
  if patients is None:
    return None
  ids = patients.subject_id if isinstance(patients, PatientEvents) else patients
  return np.unique(np.asarray(ids, np.int64))


def select_trained_on(dataset: PatientEvents, trained_on, cfg) -> tuple[np.ndarray, np.ndarray, dict]:
  """(all indices of the trained-on patients in `dataset`, the memorization draw among them,
  counts). `trained_on` = subject ids or a PatientEvents; None = the training split (the base
  model's pretraining patients), drawn exactly as `select_patients` draws `train`. The draw is up
  to `cfg.num_train_patients` long-enough patients, seeded by `cfg.seed + 1`."""
  T, min_prompt, seed = int(cfg.truncate_events), int(cfg.min_prompt_events), int(cfg.seed)
  num = int(cfg.num_train_patients)
  if trained_on is None:
    pool = np.flatnonzero(dataset.split == SPLITS.index("train"))
    if num <= 0:
      return pool, np.zeros(0, np.int64), dict(source="train split", patients=int(len(pool)))
    draw, counts = conditional.sample_patients(dataset, "train", num, seed + 1, T, min_prompt)
    return pool, draw, dict(source="train split", patients=int(len(pool)), **counts)
  ids = _subject_ids(trained_on)
  pool = np.flatnonzero(np.isin(dataset.subject_id, ids))
  if len(pool) < len(ids):
    raise DataError(f"trained_on: {len(ids) - len(pool)} of its {len(ids)} subject ids are not in the "
                    "dataset; pass the patients the method was trained on, from the evaluated dataset")
  long_enough = pool[conditional.eligible(dataset.select(pool), T, min_prompt)]
  draw = long_enough
  if 0 < num < len(long_enough):
    draw = np.sort(np.random.default_rng(seed + 1).choice(long_enough, num, replace=False))
  elif num <= 0:
    draw = np.zeros(0, np.int64)
  return pool, draw, dict(source="given", patients=int(len(pool)),
                          too_short=int(len(pool) - len(long_enough)), selected=int(len(draw)))


@dataclasses.dataclass
class EvalPlan:
  """Everything an evaluator reads (`rltf_jax.evaluation.evaluate.EVALUATORS`): one cohort, one
  method, its test patients in `patients.test` order. Per-patient arrays are [N] over them."""
  generator: object
  method: str
  cohort: Cohort
  cfg: object                 # cfg.eval
  out: Path
  dataset: PatientEvents
  patients: EvalPatients
  test: PatientEvents         # the evaluated patients' whole records
  prompts: PatientEvents
  true: PatientEvents         # the true continuations (last T events)
  generated: PatientEvents    # the generator's continuations (up to max_new_events)
  cut: PatientEvents          # the same, length-matched: the first T generated events
  valid: np.ndarray           # bool [N]: validation patients (scored; no method trained on them)
  in_prompt: np.ndarray       # bool [N]: the prompt holds a target code
  in_true: np.ndarray         # bool [N]: the true continuation does
  in_generated: np.ndarray    # bool [N]: the length-matched generation does
  trained_pool: np.ndarray    # dataset indices of the patients the method trained on
  trained_draw: np.ndarray    # the memorization draw among them
  trained_counts: dict
  members: PatientEvents | None
  base_forecast: object       # see `evaluate_generator`
  timing: dict
  design: object = None       # `rltf_jax.data.enrich.Design` (None: test split, weights 1)
  fits: utility.FitCache | None = None  # CatBoost fits shared with the other methods' evaluations

  @property
  def weights(self) -> np.ndarray:
    return self.patients.weights

  @functools.cached_property
  def synthetic_records(self) -> PatientEvents:
    """Each prompt joined with its length-matched generation (utility and prevalence read it)."""
    return conditional.join(self.prompts, self.cut)

  @property
  def T(self) -> int:
    return int(self.cfg.truncate_events)

  @property
  def B(self) -> int:
    return int(self.cfg.bootstrap_samples)

  @property
  def seed(self) -> int:
    return int(self.cfg.seed)


def build_plan(generator, method: str, dataset: PatientEvents, cohort: Cohort, cfg, out: Path, *,
               trained_on=None, members=None, design=None, base_forecast=None,
               fits=None) -> EvalPlan:
  """Selects the patients, refuses a method trained on a validation patient, and completes every
  prompt once (cached in `out`)."""
  patients = select_patients(dataset, cohort, cfg, design)
  trained_pool, trained_draw, trained_counts = select_trained_on(dataset, trained_on, cfg)
  leaked = np.intersect1d(dataset.subject_id[trained_pool], patients.valid_subject_id)
  if len(leaked):
    raise DataError(
        f"{method}: {len(leaked)} of its training patients (e.g. subject {int(leaked[0])}) are in the "
        "evaluation's validation set, on which fidelity is scored; train it on the modelling set only")
  out.mkdir(parents=True, exist_ok=True)
  T, timing = int(cfg.truncate_events), {}
  test = dataset.select(patients.test)
  prompts, true = conditional.truncate(test, T)
  prompts.save(out / "test_prompts.npz")
  true.save(out / "test_true.npz")
  generated, timing["generate_test_s"] = conditional.complete_cached(
      generator, prompts, max_new_events=int(cfg.max_new_events), seed=int(cfg.seed),
      path=out / "test_generated.npz")
  cut = conditional.head(generated, T)
  log.info("%s/%s: generated %d test continuations in %.1fs", cohort.name, method, len(generated),
           timing["generate_test_s"])
  return EvalPlan(
      generator=generator, method=method, cohort=cohort, cfg=cfg, out=out, dataset=dataset,
      patients=patients, test=test, prompts=prompts, true=true, generated=generated, cut=cut,
      valid=np.isin(test.subject_id, patients.valid_subject_id),
      in_prompt=prompts.patients_with_any(cohort.codes), in_true=true.patients_with_any(cohort.codes),
      in_generated=cut.patients_with_any(cohort.codes), trained_pool=trained_pool,
      trained_draw=trained_draw, trained_counts=trained_counts, members=members,
      base_forecast=base_forecast, timing=timing, design=design, fits=fits)
