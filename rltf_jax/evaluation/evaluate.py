"""Evaluates one generator on one cohort: every number of the paper's Tables 1, 3, 5, 6 and 7 for
that method, plus privacy and prevalence checks, written to `out_dir`.

`out_dir` after a run (all writes atomic; see the README for the full layout):
  metrics.json                 every number with its 95% bootstrap interval, the config, counts
  test_prompts.npz, test_true.npz, test_generated.npz      PatientEvents (`PatientEvents.load`)
  train_prompts.npz, train_true.npz, train_generated.npz   the same for the memorization check
  per_patient.npz              per test/train patient: target flags and ROUGE-1 (recompute fidelity)
  utility.npz                  count matrices, labels, subject ids (`utility.load_utility_data`)
  prevalence.npz               per-code prevalence, real and synthetic (the scatter plot)

Generations are cached: a rerun after a crash reuses them. An existing `metrics.json` made with the
same settings is returned as it is; one made with other settings is an error (never overwritten).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from rltf_jax import io
from rltf_jax.data.cohorts import Cohort, get_cohort
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError
from rltf_jax.evaluation import conditional, metrics, prevalence, privacy, utility

log = logging.getLogger(__name__)

METRICS_KIND = "rltf_jax.generator_eval"
METRICS_VERSION = 1

# Fields of cfg.eval that change the numbers (and so must match for a cached metrics.json).
_RESULT_FIELDS = ("truncate_events", "min_prompt_events", "max_new_events", "num_test_patients",
                  "num_train_patients", "num_membership_patients", "model_fraction",
                  "bootstrap_samples", "catboost_iterations", "catboost_depth", "seed",
                  "temperature", "top_k", "top_p")


@dataclasses.dataclass(frozen=True)
class EvalPatients:
  """Which patients the evaluation uses: fixed by the data, the cohort and cfg.eval only, so every
  method of a run sees the same ones (and LSTM/HALO can be trained on the modelling set)."""
  test: np.ndarray            # indices into the dataset (test split, long enough)
  train: np.ndarray           # indices (train split) for the memorization ROUGE
  model_subject_id: np.ndarray
  valid_subject_id: np.ndarray
  stratified: bool
  counts: dict


def _cfg_get(cfg, name, default=None):
  return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def select_patients(dataset: PatientEvents, cohort: Cohort | str, cfg) -> EvalPatients:
  """Draws the evaluated test and training patients and the 70/30 modelling/validation split."""
  cohort = get_cohort(cohort) if isinstance(cohort, str) else cohort
  T, min_prompt, seed = int(cfg.truncate_events), int(_cfg_get(cfg, "min_prompt_events", 1)), int(cfg.seed)
  test, test_counts = conditional.sample_patients(dataset, "test", int(cfg.num_test_patients), seed,
                                                  T, min_prompt)
  if int(cfg.num_train_patients) > 0:
    train, train_counts = conditional.sample_patients(dataset, "train", int(cfg.num_train_patients),
                                                      seed + 1, T, min_prompt)
  else:
    train, train_counts = np.zeros(0, np.int64), {}
  labels = dataset.select(test).patients_with_any(cohort.codes)
  model, valid, stratified = utility.model_validation_split(labels, float(cfg.model_fraction), seed)
  return EvalPatients(test=test, train=train, model_subject_id=dataset.subject_id[test][model],
                      valid_subject_id=dataset.subject_id[test][valid], stratified=stratified,
                      counts=dict(test=test_counts, train=train_counts,
                                  test_positive=int(labels.sum())))


def evaluate_generator(generator, dataset: PatientEvents, cohort: Cohort | str, cfg,
                       out_dir: str | Path, *, members: PatientEvents | None = None) -> dict:
  """Runs the whole evaluation of `generator` (see the module doc) and returns the metrics dict.

  `cfg` is `cfg.eval`. `members` are the patients the membership-inference attack calls training
  members (default: training-split patients of `dataset`); non-members are test patients.
  """
  cohort = get_cohort(cohort) if isinstance(cohort, str) else cohort
  out = Path(out_dir)
  method = getattr(generator, "name", type(generator).__name__)
  settings = {k: _plain(_cfg_get(cfg, k)) for k in _RESULT_FIELDS}
  existing = _existing(out / "metrics.json", method, cohort, settings)
  if existing is not None:
    return existing
  out.mkdir(parents=True, exist_ok=True)
  T, B, seed = int(cfg.truncate_events), int(cfg.bootstrap_samples), int(cfg.seed)
  max_new = int(cfg.max_new_events)
  timing = {}
  t0 = time.perf_counter()

  # ---------------------------------------------------------------- conditional generation
  plan = select_patients(dataset, cohort, cfg)
  test = dataset.select(plan.test)
  prompts, true = conditional.truncate(test, T)
  prompts.save(out / "test_prompts.npz")
  true.save(out / "test_true.npz")
  generated, timing["generate_test_s"] = conditional.complete_cached(
      generator, prompts, max_new_events=max_new, seed=seed, path=out / "test_generated.npz")
  log.info("%s/%s: generated %d test continuations in %.1fs", cohort.name, method,
           len(generated), timing["generate_test_s"])

  # ---------------------------------------------------------------- fidelity
  t = time.perf_counter()
  in_prompt = prompts.patients_with_any(cohort.codes)
  in_true = true.patients_with_any(cohort.codes)
  in_generated = generated.patients_with_any(cohort.codes)
  rouge_test = metrics.rouge1(conditional.code_sequences(true), conditional.code_sequences(generated))
  fidelity = dict(
      target=metrics.target_fidelity(in_generated, in_true, B, seed),
      target_new_onset=metrics.target_fidelity(in_generated[~in_prompt], in_true[~in_prompt], B, seed),
      rouge1=metrics.mean_ci(rouge_test[:, 2], B, seed),
      rouge1_precision=metrics.mean_ci(rouge_test[:, 0], B, seed),
      rouge1_recall=metrics.mean_ci(rouge_test[:, 1], B, seed))
  timing["fidelity_s"] = time.perf_counter() - t

  # ---------------------------------------------------------------- utility
  t = time.perf_counter()
  real_records = test  # prompt + true continuation is the patient's whole record
  synthetic_records = conditional.join(prompts, generated)
  data, _ = utility.build_utility_data(
      real_records, synthetic_records, real_records.patients_with_any(cohort.codes),
      synthetic_records.patients_with_any(cohort.codes), cohort.codes,
      model_fraction=float(cfg.model_fraction), seed=seed, cohort=cohort.name)
  assert np.array_equal(data.model_subject_id, plan.model_subject_id)  # one split for every method
  utility.save_utility_data(out / "utility.npz", data)
  util = utility.evaluate_utility(data, iterations=int(cfg.catboost_iterations),
                                  threads=int(cfg.catboost_threads), seed=seed,
                                  bootstrap_samples=B, depth=int(_cfg_get(cfg, "catboost_depth", 6)))
  util["stratified_split"] = plan.stratified
  timing["utility_s"] = time.perf_counter() - t

  # ---------------------------------------------------------------- memorization and privacy
  t = time.perf_counter()
  memo = dict(rouge1_test=fidelity["rouge1"])
  train_all = dataset.subset("train")
  train_long = train_all.select(conditional.eligible(train_all, T, int(_cfg_get(cfg, "min_prompt_events", 1))))
  _, train_continuations = conditional.truncate(train_long, T)
  memo["exact_copy_of_train_continuation"] = privacy.copy_rate(generated, train_continuations, B, seed)
  memo["real_test_equal_to_train_continuation"] = privacy.copy_rate(true, train_continuations, B, seed)
  rouge_train = np.zeros((0, 3))
  if len(plan.train):
    train_sel = dataset.select(plan.train)
    train_prompts, train_true = conditional.truncate(train_sel, T)
    train_prompts.save(out / "train_prompts.npz")
    train_true.save(out / "train_true.npz")
    train_generated, timing["generate_train_s"] = conditional.complete_cached(
        generator, train_prompts, max_new_events=max_new, seed=seed + 1,
        path=out / "train_generated.npz")
    rouge_train = metrics.rouge1(conditional.code_sequences(train_true),
                                 conditional.code_sequences(train_generated))
    memo["rouge1_train"] = metrics.mean_ci(rouge_train[:, 2], B, seed)
    memo["self_copy_train"] = privacy.self_copy_rate(train_generated, train_true, B, seed)
  n_mia = int(_cfg_get(cfg, "num_membership_patients", 0))
  if n_mia > 0:
    rng = np.random.default_rng(seed + 2)
    member_pool = members if members is not None else train_all
    nonmember_pool = dataset.subset("test")
    # A baseline trained on the modelling set (test patients) has members inside the test split:
    # its non-members are the test patients it did not see.
    nonmember_pool = nonmember_pool.select(~np.isin(nonmember_pool.subject_id, member_pool.subject_id))
    pick = lambda ds: ds.select(np.sort(rng.choice(len(ds), min(n_mia, len(ds)), replace=False)))
    t_mia = time.perf_counter()
    memo["membership_inference"] = privacy.membership_inference(
        generator, pick(member_pool), pick(nonmember_pool), B, seed)
    timing["membership_inference_s"] = time.perf_counter() - t_mia
  timing["memorization_s"] = time.perf_counter() - t - timing.get("generate_train_s", 0.0)

  # ---------------------------------------------------------------- prevalence
  t = time.perf_counter()
  prev, prev_arrays = prevalence.prevalence_fidelity(real_records, synthetic_records, true, generated,
                                                     cohort.codes, B, seed)
  timing["prevalence_s"] = time.perf_counter() - t
  io.atomic_savez(out / "prevalence.npz", **prev_arrays)

  io.atomic_savez(
      out / "per_patient.npz", test_subject_id=test.subject_id, test_target_in_prompt=in_prompt,
      test_target_in_true=in_true, test_target_in_generated=in_generated,
      test_rouge1_prf=rouge_test, test_true_events=true.lengths, test_generated_events=generated.lengths,
      train_subject_id=dataset.subject_id[plan.train], train_rouge1_prf=rouge_train)

  timing["total_s"] = time.perf_counter() - t0
  result = dict(
      kind=METRICS_KIND, version=METRICS_VERSION, method=method, cohort=cohort.name,
      cohort_abbrev=cohort.abbrev, settings=settings,
      patients=dict(**plan.counts, modelling=int(len(plan.model_subject_id)),
                    validation=int(len(plan.valid_subject_id))),
      generation=dict(
          mean_true_events=float(true.lengths.mean()), mean_generated_events=float(generated.lengths.mean()),
          empty_generated_fraction=float((generated.lengths == 0).mean()),
          max_new_events_reached_fraction=float((generated.lengths >= max_new).mean())),
      fidelity=fidelity, utility=util, memorization=memo, prevalence=prev,
      timing={k: round(v, 3) for k, v in timing.items()})
  io.atomic_write_json(out / "metrics.json", result)
  return result


def _existing(path: Path, method: str, cohort: Cohort, settings: dict) -> dict | None:
  if not path.exists():
    return None
  old = json.loads(path.read_text())
  if old.get("settings") != settings or old.get("method") != method or old.get("cohort") != cohort.name:
    raise ConfigError(
        f"{path} holds an evaluation of {old.get('method')!r} on {old.get('cohort')!r} with other "
        f"settings ({old.get('settings')}); delete {path.parent} or choose another output directory")
  log.info("%s exists with the same settings; not recomputed", path)
  return old


def _plain(x):
  if isinstance(x, (tuple, list)):
    return [_plain(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x
