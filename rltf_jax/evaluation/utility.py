"""Machine-learning utility: does a classifier trained on synthetic records work on real ones?

The evaluated test patients are split 70/30 (stratified by cohort membership, seeded) into a
modelling and a validation set. Features are per-patient counts of the codes that occur in at
least two of the evaluated patients' real records, except the cohort's target codes (a code no
other real record holds is zero on every other row, so it cannot be both learned and used;
`record_features`); the label is cohort membership of the same record. The feature set is thus the same for every method evaluated on those patients,
so the real and prompt-only classifiers are the same fits for all of them, and `fit_and_score`
reuses a finished fit from the caller's `FitCache` instead of refitting it. Three CatBoost classifiers are trained and scored on
the real validation set:
  real          the modelling patients' real records (prompt + true continuation);
  synthetic     the modelling patients' prompts completed by the generator (features AND label from
                prompt + generated continuation);
  augmentation  both sets of rows together;
  prompt_only   the control: the modelling patients' prompts alone, no continuation (features and
                label from the prompt), so a reader sees what the generated continuations add to
                the real prompts they extend (`prompt_model`; absent from older files).
`label_table` counts the modelling patients by real label x synthetic label (and how many prompts
already hold the target, making the synthetic label positive whatever the generator writes).
A training set with a single class cannot train a classifier: its model is the constant scorer
(AUROC 0.5, AUPRC = validation prevalence) and the result says so (`constant_scorer`).

The matrices, labels and subject ids are saved in one `.npz` (layout in `save_utility_data`) so that
`python -m rltf_jax.evaluation.utility FILE.npz` reruns this part alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import train_test_split

from rltf_jax import io
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import DataError, cli_main
from rltf_jax.evaluation import conditional, metrics

MATRICES = ("real_model", "synthetic_model", "real_valid")
OPTIONAL_MATRICES = ("prompt_model",)  # saved and loaded when present


def feature_codes(code_table: Iterable[str], target_codes: Iterable[str]) -> np.ndarray:
  """Sorted code strings used as features: the table without any of the target codes."""
  targets = set(target_codes)
  return np.array(sorted(c for c in set(map(str, code_table)) if c not in targets), dtype=str)


def record_features(records: PatientEvents, target_codes: Iterable[str], min_patients: int = 2
                    ) -> np.ndarray:
  """The evaluation's features: the codes that occur in the records of at least `min_patients` of
  `records` (the real records of the evaluated patients), without the target codes. A code one
  patient holds is zero on every other row: it cannot be learned on the modelling rows and scored
  on the validation rows both, and it costs CatBoost as much as any other column."""
  n = len(records.codes)
  pairs = np.unique(records.event_patient().astype(np.int64) * n + records.code)
  patients_per_code = np.bincount(pairs % n, minlength=n)
  return feature_codes(records.codes[patients_per_code >= min_patients], target_codes)


def count_matrix(records: PatientEvents, features: np.ndarray) -> sp.csr_matrix:
  """float32 csr [P, F]: how often each feature code occurs per patient. Codes of `records` that
  are not features (the targets, or codes unknown to `features`) are dropped.

  A `csr_matrix`, not a `csr_array`: CatBoost accepts only the former.
  """
  col_of_code = np.searchsorted(features, records.codes)
  col_of_code = np.minimum(col_of_code, max(len(features) - 1, 0))
  hit = (features[col_of_code] == records.codes) if len(features) else np.zeros(len(records.codes), bool)
  col_of_code = np.where(hit, col_of_code, -1)
  cols = col_of_code[records.code]
  keep = cols >= 0
  rows = records.event_patient()[keep]
  m = sp.coo_matrix((np.ones(int(keep.sum()), np.float32), (rows, cols[keep])),
                    shape=(records.num_patients, len(features)))
  return sp.csr_matrix(m)  # coo -> csr sums duplicate (patient, code) entries into counts


def model_validation_split(labels: np.ndarray, model_fraction: float, seed: int
                           ) -> tuple[np.ndarray, np.ndarray, bool]:
  """(modelling indices, validation indices, stratified?). Stratified by label when each class has
  at least two patients, else a plain seeded split (a class of one cannot be split)."""
  labels = np.asarray(labels, bool)
  idx = np.arange(len(labels))
  if not 0 < model_fraction < 1:
    raise DataError(f"eval.model_fraction must be in (0, 1), got {model_fraction}")
  if len(labels) < 4:
    raise DataError(f"the utility split needs at least 4 test patients, got {len(labels)}")
  stratify = min(labels.sum(), (~labels).sum()) >= 2
  model, valid = train_test_split(idx, train_size=model_fraction, random_state=seed,
                                  stratify=labels if stratify else None)
  return np.sort(model), np.sort(valid), bool(stratify)


# ---------------------------------------------------------------- saved inputs
@dataclasses.dataclass
class UtilityData:
  features: np.ndarray                # str [F]: feature code of each column
  X: dict[str, sp.csr_matrix]         # "real_model" | "synthetic_model" | "real_valid" (| "prompt_model") -> [n, F]
  y: dict[str, np.ndarray]            # same keys -> bool [n]
  model_subject_id: np.ndarray        # int64: rows of real_model, synthetic_model (and prompt_model)
  valid_subject_id: np.ndarray        # int64: rows of real_valid
  cohort: str = ""


def save_utility_data(path: str | Path, data: UtilityData) -> Path:
  """One compressed `.npz`. For each matrix M in real_model, synthetic_model, real_valid (and
  prompt_model when present): `M_data`, `M_indices`, `M_indptr`, `M_shape` (scipy CSR parts) and
  `M_labels` (bool); plus `features` (str), `model_subject_id`, `valid_subject_id` (int64) and
  `cohort` (str)."""
  arrays = dict(features=data.features, model_subject_id=data.model_subject_id,
                valid_subject_id=data.valid_subject_id, cohort=np.array(data.cohort))
  for name in MATRICES + tuple(m for m in OPTIONAL_MATRICES if m in data.X):
    x = data.X[name]
    arrays.update({f"{name}_data": x.data, f"{name}_indices": x.indices, f"{name}_indptr": x.indptr,
                   f"{name}_shape": np.array(x.shape), f"{name}_labels": data.y[name]})
  return io.atomic_savez(path, **arrays)


def load_utility_data(path: str | Path) -> UtilityData:
  try:
    z = io.load_npz(path)
    names = MATRICES + tuple(m for m in OPTIONAL_MATRICES if f"{m}_data" in z)
    X = {m: sp.csr_matrix((z[f"{m}_data"], z[f"{m}_indices"], z[f"{m}_indptr"]),
                          shape=tuple(z[f"{m}_shape"])) for m in names}
    y = {m: z[f"{m}_labels"].astype(bool) for m in names}
    return UtilityData(features=z["features"], X=X, y=y, model_subject_id=z["model_subject_id"],
                       valid_subject_id=z["valid_subject_id"], cohort=str(z["cohort"]))
  except (OSError, ValueError, KeyError) as e:
    raise DataError(f"{path}: not a utility data file ({e}); rerun the evaluation to rebuild it") from e


# ---------------------------------------------------------------- classifiers
class FitCache:
  """Finished fits by a digest of everything they depend on (`_fit_key`), owned by whoever runs
  several evaluations on the same patients (the pipeline, one per cohort) and passed to them.
  CatBoost on the CPU is deterministic for a seed and thread count, so a fit found here is the fit
  that would be made: the base model's, RLTF's and SFT's evaluations of one cohort share their
  real and prompt-only rows, which saves two of each later evaluation's six fits."""

  def __init__(self, max_fits: int = 32):  # ~100 KB each at the default size
    self.max_fits, self.made, self._scores = max_fits, 0, {}

  def get(self, key: str) -> np.ndarray | None:
    return self._scores[key].copy() if key in self._scores else None

  def put(self, key: str, scores: np.ndarray) -> None:
    self.made += 1
    if len(self._scores) >= self.max_fits:
      del self._scores[next(iter(self._scores))]  # the oldest
    self._scores[key] = scores.copy()


def _fit_key(X_train: sp.csr_matrix, y_train: np.ndarray, X_valid: sp.csr_matrix, **settings) -> str:
  h = hashlib.sha256(repr(sorted(settings.items())).encode())
  for x in (X_train, X_valid):
    x = x if x.has_canonical_format else x.copy()
    x.sum_duplicates()  # one layout per matrix, so equal matrices digest equally
    for part in (np.array(x.shape), x.indptr, x.indices, x.data.astype(np.float32)):
      h.update(np.ascontiguousarray(part).tobytes())
  h.update(np.asarray(y_train, bool).tobytes())
  return h.hexdigest()


def fit_and_score(X_train: sp.csr_matrix, y_train: np.ndarray, X_valid: sp.csr_matrix, *,
                  iterations: int, threads: int, seed: int, depth: int = 6,
                  fits: FitCache | None = None) -> tuple[np.ndarray, bool]:
  """(P(positive) for each validation row, constant?). A one-class training set gives the
  constant score of its label (no classifier can be trained). With `fits`, a fit already made
  there on the same inputs and settings is returned as it is, and a new one is kept."""
  y_train = np.asarray(y_train, bool)
  if y_train.all() or not y_train.any():
    return np.full(X_valid.shape[0], float(y_train.mean()) if len(y_train) else 0.0), True
  key = found = None
  if fits is not None:
    key = _fit_key(X_train, y_train, X_valid, iterations=iterations, threads=threads, seed=seed,
                   depth=depth)
    found = fits.get(key)
  if found is not None:
    return found, False
  from catboost import CatBoostClassifier  # imported here: slow to import, needed only here
  model = CatBoostClassifier(iterations=iterations, depth=depth, thread_count=threads,
                             random_seed=seed, verbose=False, allow_writing_files=False)
  model.fit(X_train, y_train.astype(np.int32))
  scores = model.predict_proba(X_valid)[:, 1]
  if fits is not None:
    fits.put(key, scores)
  return scores, False


def label_table(real: np.ndarray, synthetic: np.ndarray, in_prompt: np.ndarray | None = None) -> dict:
  """The 2x2 table of patients by real label (target in the real record) x synthetic label (target
  in the synthetic record), and how many prompts hold the target (`in_prompt`; those are positive
  in both records whatever the generator writes)."""
  real, synthetic = np.asarray(real, bool), np.asarray(synthetic, bool)
  out = dict(patients=int(len(real)),
             real_positive=dict(synthetic_positive=int((real & synthetic).sum()),
                                synthetic_negative=int((real & ~synthetic).sum())),
             real_negative=dict(synthetic_positive=int((~real & synthetic).sum()),
                                synthetic_negative=int((~real & ~synthetic).sum())))
  if in_prompt is not None:
    out["target_in_prompt"] = int(np.asarray(in_prompt, bool).sum())
  return out


TRAIN_SETS = ("real", "synthetic", "augmentation", "prompt_only")


def evaluate_utility(data: UtilityData, *, iterations: int, threads: int, seed: int,
                     bootstrap_samples: int, depth: int = 6, rows: Iterable[str] | None = None,
                     weights: np.ndarray | None = None, scores_out: dict | None = None,
                     fits: FitCache | None = None) -> dict:
  """AUROC and AUPRC (with intervals) on the real validation set for the real, synthetic,
  augmentation and (when `data` has the prompts) prompt-only training sets, with each training
  set's size and positives; `rows` picks some of them. Also `label_table` (real x synthetic labels
  of the modelling patients) and `validation` (its size). `weights`: design weights of the
  validation patients (the classifiers train unweighted: ranking needs no population mix).
  `scores_out`, when given, receives each training set's validation scores (paired comparisons);
  `fits` (`FitCache`) shares finished fits between evaluations of the same patients."""
  train_sets = {
      "real": lambda: (data.X["real_model"], data.y["real_model"]),
      "synthetic": lambda: (data.X["synthetic_model"], data.y["synthetic_model"]),
      "augmentation": lambda: (
          sp.vstack([data.X["real_model"], data.X["synthetic_model"]], format="csr"),
          np.concatenate([data.y["real_model"], data.y["synthetic_model"]])),
  }
  if "prompt_model" in data.X:
    train_sets["prompt_only"] = lambda: (data.X["prompt_model"], data.y["prompt_model"])
  if rows is not None:
    rows = list(rows)
    unknown = [r for r in rows if r not in TRAIN_SETS]
    if unknown:
      raise DataError(f"unknown utility rows {unknown}; choose from {TRAIN_SETS}")
    train_sets = {k: v for k, v in train_sets.items() if k in rows}
  y_valid = data.y["real_valid"]
  out = {}
  for name, make in train_sets.items():
    X, y = make()
    scores, constant = fit_and_score(X, y, data.X["real_valid"], iterations=iterations,
                                     threads=threads, seed=seed, depth=depth, fits=fits)
    if scores_out is not None:
      scores_out[name] = scores
    out[name] = dict(
        **metrics.ranking_metrics(scores, y_valid, bootstrap_samples, seed, weights),
        train_patients=int(len(y)), train_positives=int(np.sum(y)), constant_scorer=constant)
  out["label_table"] = label_table(data.y["real_model"], data.y["synthetic_model"],
                                   data.y.get("prompt_model"))
  out["validation"] = dict(patients=int(len(y_valid)), positives=int(y_valid.sum()),
                           features=int(len(data.features)))
  return out


def build_utility_data(real: PatientEvents, synthetic: PatientEvents, real_labels: np.ndarray,
                       synthetic_labels: np.ndarray, target_codes: Iterable[str], *,
                       model_fraction: float, seed: int, cohort: str = "",
                       prompts: PatientEvents | None = None, prompt_labels: np.ndarray | None = None
                       ) -> tuple[UtilityData, bool]:
  """Splits the patients (by their real labels), builds the count matrices; returns the data and
  whether the split was stratified. `real` and `synthetic` hold the same patients in the same order:
  real records and prompt + generated records. `prompts` (same patients, with `prompt_labels`)
  adds the prompt-only control's modelling matrix. Features: the codes of the `real` records
  (`record_features`), so they do not depend on what the generator wrote."""
  if not np.array_equal(real.subject_id, synthetic.subject_id):
    raise DataError("utility: real and synthetic records must list the same patients in order")
  if prompts is not None and (prompt_labels is None or not np.array_equal(real.subject_id, prompts.subject_id)):
    raise DataError("utility: prompts need their labels and must list the real records' patients in order")
  target_codes = list(target_codes)
  features = record_features(real, target_codes)
  model, valid, stratified = model_validation_split(real_labels, model_fraction, seed)
  X = dict(real_model=count_matrix(real.select(model), features),
           synthetic_model=count_matrix(synthetic.select(model), features),
           real_valid=count_matrix(real.select(valid), features))
  y = dict(real_model=np.asarray(real_labels, bool)[model],
           synthetic_model=np.asarray(synthetic_labels, bool)[model],
           real_valid=np.asarray(real_labels, bool)[valid])
  if prompts is not None:
    X["prompt_model"] = count_matrix(prompts.select(model), features)
    y["prompt_model"] = np.asarray(prompt_labels, bool)[model]
  return UtilityData(features=features, X=X, y=y, model_subject_id=real.subject_id[model],
                     valid_subject_id=real.subject_id[valid], cohort=cohort), stratified


def evaluate(plan, results: dict) -> tuple[dict, dict]:
  """Evaluator `utility`: {"utility", "utility_uncut"} (train on the modelling patients' real,
  synthetic or prompt-only records, score on the validation patients' real ones) and each row's
  validation scores; saves `utility.npz` and `utility_uncut.npz`."""
  del results
  cfg, cohort, seed, B = plan.cfg, plan.cohort, plan.seed, plan.B
  real_records = plan.test  # prompt + true continuation is the patient's whole record
  util_kw = dict(iterations=int(cfg.catboost_iterations), threads=int(cfg.catboost_threads), seed=seed,
                 bootstrap_samples=B, depth=int(cfg.catboost_depth), weights=plan.weights[plan.valid],
                 fits=plan.fits)
  out, scores = {}, {}
  for key, synthetic, rows in (
      ("utility", plan.synthetic_records, None),
      ("utility_uncut", conditional.join(plan.prompts, plan.generated), ("synthetic", "augmentation"))):
    data, _ = build_utility_data(
        real_records, synthetic, real_records.patients_with_any(cohort.codes),
        synthetic.patients_with_any(cohort.codes),
        cohort.codes, model_fraction=float(cfg.model_fraction), seed=seed, cohort=cohort.name,
        prompts=plan.prompts, prompt_labels=plan.in_prompt)
    if not np.array_equal(data.model_subject_id, plan.patients.model_subject_id):
      raise DataError("utility's modelling split differs from the evaluation plan's")  # one split for all
    save_utility_data(plan.out / f"{key}.npz", data)
    kw = dict(util_kw, **({"rows": rows} if rows else {"scores_out": scores}))
    out[key] = evaluate_utility(data, **kw)
  out["utility"]["stratified_split"] = plan.patients.stratified
  del out["utility_uncut"]["validation"]  # the same as the primary one's
  return out, {f"utility_scores_{k}": v for k, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description="Rerun the utility evaluation from a saved utility .npz.")
  p.add_argument("npz", type=Path)
  p.add_argument("--iterations", type=int, default=200)
  p.add_argument("--threads", type=int, default=2)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--bootstrap", type=int, default=1000)
  args = p.parse_args(argv)
  result = evaluate_utility(load_utility_data(args.npz), iterations=args.iterations,
                            threads=args.threads, seed=args.seed, bootstrap_samples=args.bootstrap)
  print(json.dumps(result, indent=2))
  return 0


if __name__ == "__main__":
  cli_main(main)
