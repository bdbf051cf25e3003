"""Evaluates one generator on one cohort: every number of the paper's Tables 1, 3, 5, 6 and 7 for
that method, plus privacy and prevalence checks, written to `out_dir`.

Who is scored on what (see `evaluate_generator`): every evaluated test patient is completed once.
Fidelity, prevalence and the test side of memorization use the *validation* part of the
modelling/validation split, which no method trains on (LSTM and HALO train on the modelling
part); utility trains on the modelling part and scores on the validation part; memorization's
training side uses the patients the method was trained on (`trained_on`). Primary numbers are
length-matched (a generation cut to its first T events, T = the true continuation's length); the
`*_uncut` numbers beside them use the whole generation.

`out_dir` after a run (all writes atomic; see the README for the full layout):
  metrics.json                 every number with its 95% bootstrap interval, the config, counts
  test_prompts.npz, test_true.npz, test_generated.npz      PatientEvents (`PatientEvents.load`)
  train_prompts.npz, train_true.npz, train_generated.npz   the same for the memorization check
  per_patient.npz              per test/train patient: target flags and ROUGE-1 (recompute fidelity)
  utility.npz                  count matrices, labels, subject ids (`utility.load_utility_data`)
  utility_uncut.npz            the same with the uncut generations as synthetic records
  prevalence.npz               per-code prevalence, real and synthetic (the scatter plot)

`out_dir` is a `rltf_jax.runs.RunDir`: its identity is the settings below, the dataset's and the
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
from rltf_jax.data import enrich
from rltf_jax.data.cohorts import Cohort, get_cohort
from rltf_jax.data.events import SPLITS, PatientEvents
from rltf_jax.errors import DataError
from rltf_jax.evaluation import conditional, forecast, metrics, prevalence, privacy, utility
from rltf_jax.runs import RunDir

log = logging.getLogger(__name__)

METRICS_KIND = "rltf_jax.generator_eval"
METRICS_VERSION = 4  # 4: forecast (K draws); 3: stratified draw, design weights; 2: validation patients

# Fields of cfg.eval that change the numbers (and so must match for a cached metrics.json).
_RESULT_FIELDS = ("truncate_events", "min_prompt_events", "max_new_events", "num_test_patients",
                  "num_train_patients", "num_membership_patients", "model_fraction", "member_fraction",
                  "bootstrap_samples", "catboost_iterations", "catboost_depth", "seed",
                  "temperature", "top_k", "top_p", "forecast_samples")


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
  T, min_prompt, seed = int(cfg.truncate_events), int(cfg.min_prompt_events), int(cfg.seed)
  split = design.eval_split if design is not None else "test"
  prior = design.inclusion if design is not None else np.ones(dataset.num_patients)
  pool, pool_counts = conditional.sample_patients(dataset, split, 0, seed, T, min_prompt)
  member = dataset.select(pool).patients_with_any(cohort.codes)
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


def _fidelity(in_prompt, in_true, in_generated, rouge_prf, B: int, seed: int, population: str,
              continuation: str, weights: np.ndarray) -> dict:
  strata = (("all", np.ones_like(in_prompt)), ("new_onset", ~in_prompt), ("repeat", in_prompt))
  w = weights
  return dict(
      target=metrics.target_fidelity(in_generated, in_true, B, seed, w),
      target_new_onset=metrics.target_fidelity(in_generated[~in_prompt], in_true[~in_prompt], B, seed,
                                               w[~in_prompt]),
      target_repeat=metrics.target_fidelity(in_generated[in_prompt], in_true[in_prompt], B, seed,
                                            w[in_prompt]),
      calibration={stratum: metrics.calibration_ratio(in_generated[m], in_true[m], B, seed, w[m])
                   for stratum, m in strata},
      rouge1=metrics.mean_ci(rouge_prf[:, 2], B, seed, w),
      rouge1_precision=metrics.mean_ci(rouge_prf[:, 0], B, seed, w),
      rouge1_recall=metrics.mean_ci(rouge_prf[:, 1], B, seed, w),
      weighted=bool(len(w) and np.ptp(w) > 0),
      population=population, continuation=continuation)


def evaluate_generator(generator, dataset: PatientEvents, cohort: Cohort | str, cfg,
                       out_dir: str | Path, *, trained_on=None,
                       members: PatientEvents | None = None, inputs: dict | None = None,
                       training: dict | None = None, design=None,
                       base_forecast: str | Path | None = None) -> dict:
  """Runs the whole evaluation of `generator` (see the module doc) and returns the metrics dict.

  `cfg` is `cfg.eval`. `trained_on` names the patients the method was trained on (subject ids, or
  a PatientEvents whose subject ids are used; they must be in `dataset`): the patients of its
  preference pairs for RLTF and SFT, the modelling set (`select_patients(...).model_subject_id`)
  for LSTM and HALO; None (default) means the training split, the base model's pretraining
  patients. Memorization (ROUGE-1 train, self-copies, membership members) is measured on them;
  they must not include a validation patient, on whom fidelity is scored. `members` overrides
  the membership attack's members (default: the trained-on patients); non-members are test
  patients that are neither.

  Populations: fidelity, prevalence and the test side of memorization are scored on the
  validation part of the modelling/validation split, which no method trains on; utility trains on
  the modelling part (real, synthetic, prompt-only) and scores on the validation part. Primary
  numbers are length-matched: a generated continuation is cut to its first T events (T =
  `truncate_events`, the true continuation's length); `fidelity_uncut` and `utility_uncut` give
  the same numbers for the whole generation (up to `max_new_events`). `training` (the caller's
  description of the method's training data, e.g. its pairs' counts) is stored as it is.

  `base_forecast`: the base model's `test_forecast.npz` on the same patients (its evaluation's),
  from which the forecast's logit-bias anchor is tuned; `forecast.SELF` when `generator` is the
  base model (its own draws are used); None where no base model is evaluated (no such anchor).

  `design` (`rltf_jax.data.enrich.Design`; default: the test split, every patient weight 1) says
  which split the evaluated patients come from and their prior inclusion probabilities; every
  prevalence-dependent number (precision, F1, prevalences, calibration, ROUGE-1 means, AUROC and
  AUPRC, code prevalences) is weighted by 1 / inclusion probability to estimate its population
  value, and the target's numbers are given unweighted too.
  """
  cohort = get_cohort(cohort) if isinstance(cohort, str) else cohort
  out = Path(out_dir)
  method = getattr(generator, "name", type(generator).__name__)
  settings = {k: runs.plain(cfg[k]) for k in _RESULT_FIELDS}
  trained_ids = _subject_ids(trained_on)
  run = RunDir(out, "eval", dict(settings=settings, method=method), dict(
      inputs or {}, dataset=dataset.fingerprint(), cohort=runs.digest(dataclasses.asdict(cohort)),
      trained_on=runs.digest(None if trained_ids is None else trained_ids.tolist()),
      members=runs.digest(None if members is None else members.fingerprint()),
      **({} if design is None else dict(design=runs.digest(
          [design.eval_split, np.round(design.inclusion, 12).tolist()])))))
  if run.done:
    log.info("%s: finished with the same identity; not recomputed", out)
    return json.loads((out / "metrics.json").read_text())
  run.start()
  T, B, seed = int(cfg.truncate_events), int(cfg.bootstrap_samples), int(cfg.seed)
  max_new = int(cfg.max_new_events)
  timing = {}
  t0 = time.perf_counter()

  plan = select_patients(dataset, cohort, cfg, design)
  trained_pool, trained_draw, trained_counts = select_trained_on(dataset, trained_on, cfg)
  leaked = np.intersect1d(dataset.subject_id[trained_pool], plan.valid_subject_id)
  if len(leaked):
    raise DataError(
        f"{method}: {len(leaked)} of its training patients (e.g. subject {int(leaked[0])}) are in the "
        "evaluation's validation set, on which fidelity is scored; train it on the modelling set only")
  out.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------- conditional generation
  test = dataset.select(plan.test)
  prompts, true = conditional.truncate(test, T)
  prompts.save(out / "test_prompts.npz")
  true.save(out / "test_true.npz")
  generated, timing["generate_test_s"] = conditional.complete_cached(
      generator, prompts, max_new_events=max_new, seed=seed, path=out / "test_generated.npz")
  cut = conditional.head(generated, T)  # length-matched: the first T generated events
  log.info("%s/%s: generated %d test continuations in %.1fs", cohort.name, method,
           len(generated), timing["generate_test_s"])
  valid = np.isin(test.subject_id, plan.valid_subject_id)

  # ---------------------------------------------------------------- fidelity (validation patients)
  t = time.perf_counter()
  in_prompt = prompts.patients_with_any(cohort.codes)
  in_true = true.patients_with_any(cohort.codes)
  in_generated = cut.patients_with_any(cohort.codes)
  in_generated_uncut = generated.patients_with_any(cohort.codes)
  true_codes = conditional.code_sequences(true)
  rouge_test = metrics.rouge1(true_codes, conditional.code_sequences(cut))
  rouge_test_uncut = metrics.rouge1(true_codes, conditional.code_sequences(generated))
  v = valid
  weights = plan.weights
  wv = weights[v]
  fidelity = _fidelity(in_prompt[v], in_true[v], in_generated[v], rouge_test[v], B, seed,
                       "validation", f"first {T} generated events", wv)
  fidelity_uncut = _fidelity(in_prompt[v], in_true[v], in_generated_uncut[v], rouge_test_uncut[v], B,
                             seed, "validation", f"whole generation (at most {max_new} events)", wv)
  timing["fidelity_s"] = time.perf_counter() - t

  # ---------------------------------------------------------------- forecast (K draws per patient)
  t = time.perf_counter()
  base_draws = base_forecast if base_forecast in (None, forecast.SELF) else io.load_npz(base_forecast)
  forecast_result, forecast_arrays = forecast.evaluate(
      generator, prompts, in_true, in_prompt, in_generated, weights, valid, cohort.codes, cfg, out,
      base_draws=base_draws)
  timing["forecast_s"] = time.perf_counter() - t

  # ---------------------------------------------------------------- utility (modelling -> validation)
  t = time.perf_counter()
  real_records = test  # prompt + true continuation is the patient's whole record
  synthetic_records = conditional.join(prompts, cut)
  synthetic_uncut = conditional.join(prompts, generated)
  real_labels = real_records.patients_with_any(cohort.codes)
  util_kw = dict(iterations=int(cfg.catboost_iterations), threads=int(cfg.catboost_threads), seed=seed,
                 bootstrap_samples=B, depth=int(cfg.catboost_depth))
  data, _ = utility.build_utility_data(
      real_records, synthetic_records, real_labels, synthetic_records.patients_with_any(cohort.codes),
      cohort.codes, model_fraction=float(cfg.model_fraction), seed=seed, cohort=cohort.name,
      prompts=prompts, prompt_labels=in_prompt)
  assert np.array_equal(data.model_subject_id, plan.model_subject_id)  # one split for every method
  utility.save_utility_data(out / "utility.npz", data)
  util_kw["weights"] = wv  # the utility split is the plan's (asserted above), in test order
  utility_scores = {}
  util = utility.evaluate_utility(data, scores_out=utility_scores, **util_kw)
  util["stratified_split"] = plan.stratified
  data_uncut, _ = utility.build_utility_data(
      real_records, synthetic_uncut, real_labels, synthetic_uncut.patients_with_any(cohort.codes),
      cohort.codes, model_fraction=float(cfg.model_fraction), seed=seed, cohort=cohort.name,
      prompts=prompts, prompt_labels=in_prompt)
  utility.save_utility_data(out / "utility_uncut.npz", data_uncut)
  util_uncut = utility.evaluate_utility(data_uncut, rows=("synthetic", "augmentation"), **util_kw)
  del util_uncut["validation"]  # the same as the primary one's
  timing["utility_s"] = time.perf_counter() - t

  # ---------------------------------------------------------------- memorization and privacy
  t = time.perf_counter()
  memo = dict(rouge1_test=fidelity["rouge1"], rouge1_test_uncut=fidelity_uncut["rouge1"])
  # Reference continuations: the training split's and the method's own training patients'.
  reference_idx = np.union1d(np.flatnonzero(dataset.split == SPLITS.index("train")), trained_pool)
  reference = dataset.select(reference_idx)
  reference = reference.select(conditional.eligible(reference, T, int(cfg.min_prompt_events)))
  _, train_continuations = conditional.truncate(reference, T)
  memo["exact_copy_of_train_continuation"] = privacy.copy_rate(cut.select(np.flatnonzero(v)),
                                                               train_continuations, B, seed)
  memo["real_test_equal_to_train_continuation"] = privacy.copy_rate(true.select(np.flatnonzero(v)),
                                                                    train_continuations, B, seed)
  rouge_train = rouge_train_uncut = np.zeros((0, 3))
  if len(trained_draw):
    train_sel = dataset.select(trained_draw)
    train_prompts, train_true = conditional.truncate(train_sel, T)
    train_prompts.save(out / "train_prompts.npz")
    train_true.save(out / "train_true.npz")
    train_generated, timing["generate_train_s"] = conditional.complete_cached(
        generator, train_prompts, max_new_events=max_new, seed=seed + 1,
        path=out / "train_generated.npz")
    train_cut = conditional.head(train_generated, T)
    train_true_codes = conditional.code_sequences(train_true)
    rouge_train = metrics.rouge1(train_true_codes, conditional.code_sequences(train_cut))
    rouge_train_uncut = metrics.rouge1(train_true_codes, conditional.code_sequences(train_generated))
    memo["rouge1_train"] = metrics.mean_ci(rouge_train[:, 2], B, seed)
    memo["rouge1_train_uncut"] = metrics.mean_ci(rouge_train_uncut[:, 2], B, seed)
    memo["self_copy_train"] = privacy.self_copy_rate(train_cut, train_true, B, seed)
  memo["train_population"] = trained_counts["source"]
  n_mia = int(cfg.num_membership_patients)
  if n_mia > 0:
    rng = np.random.default_rng(seed + 2)
    member_pool = members if members is not None else dataset.select(trained_pool)
    nonmember_pool = dataset.subset("test")
    # A baseline trained on the modelling set (test patients) has members inside the test split:
    # its non-members are the test patients it did not see.
    seen = np.union1d(member_pool.subject_id, dataset.subject_id[trained_pool])
    nonmember_pool = nonmember_pool.select(~np.isin(nonmember_pool.subject_id, seen))
    pick = lambda ds: ds.select(np.sort(rng.choice(len(ds), min(n_mia, len(ds)), replace=False)))
    t_mia = time.perf_counter()
    memo["membership_inference"] = privacy.membership_inference(
        generator, pick(member_pool), pick(nonmember_pool), B, seed)
    timing["membership_inference_s"] = time.perf_counter() - t_mia
  timing["memorization_s"] = time.perf_counter() - t - timing.get("generate_train_s", 0.0)

  # ---------------------------------------------------------------- prevalence (validation patients)
  t = time.perf_counter()
  vi = np.flatnonzero(v)
  prev, prev_arrays = prevalence.prevalence_fidelity(
      real_records.select(vi), synthetic_records.select(vi), true.select(vi), cut.select(vi),
      cohort.codes, B, seed, wv)
  prev["population"], prev["continuation"] = "validation", f"first {T} generated events"
  timing["prevalence_s"] = time.perf_counter() - t
  io.atomic_savez(out / "prevalence.npz", **prev_arrays)

  io.atomic_savez(
      out / "per_patient.npz", test_subject_id=test.subject_id, test_validation=valid, test_weight=weights,
      **{f"utility_scores_{k}": v for k, v in utility_scores.items()},
      test_target_in_prompt=in_prompt, test_target_in_true=in_true,
      test_target_in_generated=in_generated, test_target_in_generated_uncut=in_generated_uncut,
      test_rouge1_prf=rouge_test, test_rouge1_prf_uncut=rouge_test_uncut,
      test_true_events=true.lengths, test_generated_events=generated.lengths,
      train_subject_id=dataset.subject_id[trained_draw], train_rouge1_prf=rouge_train,
      train_rouge1_prf_uncut=rouge_train_uncut, **forecast_arrays)

  timing["total_s"] = time.perf_counter() - t0
  result = dict(
      kind=METRICS_KIND, version=METRICS_VERSION, method=method, cohort=cohort.name,
      cohort_abbrev=cohort.abbrev, cohort_definition=runs.plain(dataclasses.asdict(cohort)),
      cohort_acute=cohort.acute, settings=settings,
      design=dict(split=plan.counts["test"]["split"], weighted=fidelity["weighted"],
                  validation_weight_range=[float(wv.min()), float(wv.max())] if len(wv) else None,
                  validation_effective_patients=float(wv.sum() ** 2 / (wv ** 2).sum()) if len(wv) else 0.0),
      patients=dict(**plan.counts, train={k: v for k, v in trained_counts.items()
                                          if k not in ("source", "patients")},
                    modelling=int(len(plan.model_subject_id)),
                    validation=int(len(plan.valid_subject_id)),
                    trained_on=dict(source=trained_counts["source"], patients=trained_counts["patients"])),
      generation=dict(
          mean_true_events=float(true.lengths.mean()), mean_generated_events=float(generated.lengths.mean()),
          mean_generated_events_length_matched=float(cut.lengths.mean()),
          shorter_than_true_fraction=float((generated.lengths < T).mean()),
          empty_generated_fraction=float((generated.lengths == 0).mean()),
          max_new_events_reached_fraction=float((generated.lengths >= max_new).mean())),
      forecast=forecast_result,
      fidelity=fidelity, fidelity_uncut=fidelity_uncut, utility=util, utility_uncut=util_uncut,
      memorization=memo, prevalence=prev, training=dict(training or {}),
      timing={k: round(v, 3) for k, v in timing.items()})
  io.atomic_write_json(out / "metrics.json", result)
  run.finish(seconds=timing["total_s"])
  return result
