"""Fidelity of a released synthetic dataset to real records, overall and on the rare cohort's
patients: what a user of the data would check before trusting it.

  (run with dataset_privacy's command line: `python -m rltf_jax.evaluation.dataset_privacy`)

Per population (`all`, and `cohort`: the patients with a target code):
  prevalence     per-code prevalence, synthetic against real, split by the code's real frequency
                 (common >= 1%, uncommon 0.1-1%, rare < 0.1% of patients), so that the rare tail is
                 not averaged away: Pearson r and R^2 on the identity line per bucket, with counts;
  cooccurrence   the rate of each pair of the `top_codes` most frequent real codes occurring in one
                 record, synthetic against real (R^2 on the identity line and r, as HALO reports);
  distributions  record length (events), visits per patient, codes per visit, age at each event
                 and days between visits: Wasserstein distance and the two-sample Kolmogorov-Smirnov
                 statistic (scipy), beside each distribution's median;
  detection      a classifier told to separate real from synthetic records (logistic regression on
                 code sets and record length, scikit-learn, 5-fold cross-validated): AUC, 0.5 when
                 the two are indistinguishable.
The copy and marginals anchors (`dataset_privacy`) are scored on what a code-set anchor has:
prevalence, co-occurrence and detection.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy import stats

from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import metrics

BUCKETS = (("common", 0.01, 1.01), ("uncommon", 0.001, 0.01), ("rare", 0.0, 0.001))


def _agreement(real: np.ndarray, syn: np.ndarray) -> dict:
  keep = (real > 0) | (syn > 0)
  r, s = real[keep], syn[keep]
  if len(r) < 2:
    return dict(codes=int(len(r)), pearson_r=None, r2_identity=None)
  r_value, r2 = metrics.agreement_rows(r, s)[0]
  finite = lambda x: float(x) if np.isfinite(x) else None
  return dict(codes=int(len(r)), pearson_r=finite(r_value), r2_identity=finite(r2))


def prevalence_by_bucket(real: sp.csr_matrix, syn: sp.csr_matrix) -> dict:
  p_real = np.asarray(real.mean(axis=0)).ravel()
  p_syn = np.asarray(syn.mean(axis=0)).ravel()
  out = {}
  for name, lo, hi in BUCKETS:
    m = (p_real >= lo) & (p_real < hi) & ((p_real > 0) | (p_syn > 0))
    out[name] = _agreement(p_real[m], p_syn[m])
  out["all"] = _agreement(p_real, p_syn)
  return out


def cooccurrence(real: sp.csr_matrix, syn: sp.csr_matrix, top_codes: int = 200) -> dict:
  p_real = np.asarray(real.mean(axis=0)).ravel()
  top = np.argsort(-p_real)[:top_codes]
  top = top[p_real[top] > 0]
  if len(top) < 2 or real.shape[0] == 0 or syn.shape[0] == 0:
    return dict(pairs=0, pearson_r=None, r2_identity=None)
  iu = np.triu_indices(len(top), 1)
  pair = lambda x: (np.asarray((x[:, top].T @ x[:, top]).todense()) / x.shape[0])[iu]
  out = _agreement(pair(real), pair(syn))
  out["pairs"] = out.pop("codes")
  out["top_codes"] = int(len(top))
  return out


def _profile(ds: PatientEvents) -> dict[str, np.ndarray]:
  """Per-patient and per-event distributions of a dataset."""
  pat = ds.event_patient()
  new_visit = np.ones(ds.num_events, bool)
  if ds.num_events:
    new_visit[1:] = (np.diff(ds.visit) != 0) | (np.diff(pat) != 0)
  visits = np.bincount(pat[new_visit], minlength=ds.num_patients) if ds.num_events else np.zeros(0)
  per_visit = np.diff(np.append(np.flatnonzero(new_visit), ds.num_events)) if ds.num_events else np.zeros(0)
  vday, vpat = ds.day[new_visit], pat[new_visit]
  gaps = np.diff(vday)[np.diff(vpat) == 0] if len(vday) > 1 else np.zeros(0)
  return dict(record_events=ds.lengths.astype(np.float64), visits=visits.astype(np.float64),
              codes_per_visit=per_visit.astype(np.float64), age_years=ds.age.astype(np.float64),
              days_between_visits=gaps.astype(np.float64))


def distributions(real: PatientEvents, syn: PatientEvents) -> dict:
  a, b = _profile(real), _profile(syn)
  out = {}
  for name in a:
    x, y = a[name], b[name]
    if len(x) == 0 or len(y) == 0:
      out[name] = dict(reason="empty")
      continue
    out[name] = dict(wasserstein=float(stats.wasserstein_distance(x, y)),
                     ks=float(stats.ks_2samp(x, y).statistic),
                     real_median=float(np.median(x)), synthetic_median=float(np.median(y)))
  return out


def detection_auc(real: sp.csr_matrix, syn: sp.csr_matrix, seed: int, max_rows: int = 5000) -> dict:
  """5-fold cross-validated AUC of logistic regression separating real (1) from synthetic (0)."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import StratifiedKFold, cross_val_predict
  rng = np.random.default_rng(seed)
  n = min(real.shape[0], syn.shape[0], max_rows)
  if n < 10:
    return dict(reason=f"too few records ({n})")
  take = lambda x: x[np.sort(rng.choice(x.shape[0], n, replace=False))]
  r, s = take(real), take(syn)
  length = lambda x: sp.csr_matrix(np.log1p(np.asarray(x.sum(axis=1))))
  X = sp.vstack([sp.hstack([r, length(r)]), sp.hstack([s, length(s)])]).tocsr()
  y = np.concatenate([np.ones(n, int), np.zeros(n, int)])
  folds = StratifiedKFold(5, shuffle=True, random_state=seed)
  # liblinear: on sparse code sets it reaches lbfgs's fit (AUC equal to 3 decimals on the default
  # run's records) in a third of the time.
  p = cross_val_predict(LogisticRegression(solver="liblinear", C=1.0), X, y, cv=folds,
                        method="predict_proba")[:, 1]
  return dict(auroc=float(metrics.auroc(p, y.astype(bool))[0]), records_per_side=int(n))


def fidelity_block(real: sp.csr_matrix, syn: sp.csr_matrix, seed: int,
                   real_events: PatientEvents | None = None, syn_events: PatientEvents | None = None) -> dict:
  out = dict(patients=dict(real=int(real.shape[0]), synthetic=int(syn.shape[0])))
  if min(real.shape[0], syn.shape[0]) < 2:
    out["reason"] = "fewer than 2 patients in one of the sets"
    return out
  out["prevalence"] = prevalence_by_bucket(real, syn)
  out["cooccurrence"] = cooccurrence(real, syn)
  out["detection"] = detection_auc(real, syn, seed)
  if real_events is not None and syn_events is not None:
    out["distributions"] = distributions(real_events, syn_events)
  return out
