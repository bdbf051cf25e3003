"""Metrics with bootstrap confidence intervals, vectorised over resamples.

Every statistic here is written as a function of per-patient weights: the plain estimate uses weight
1 for every patient, and a bootstrap resample is the same function with weights = how often each
patient was drawn. One matrix product (or cumulative sum) per block of resamples replaces a Python
loop over resamples.

Conventions (the paper's tables print 0.00/0.00/0.00 where a method never generates the target):
  * precision with no predicted positive, recall with no true positive, and F1 when precision +
    recall = 0 are 0.0, never NaN; `counts` in the result says when a convention applied;
  * AUROC and AUPRC need both classes: with only one they are NaN (and so is that resample);
  * bootstrap intervals are percentile intervals over the resamples where the statistic is defined.

Design weights (`weights=`, one per patient: 1 / inclusion probability, `rltf_jax.data.enrich`)
multiply the resample counts, so a number from a cohort-enriched sample estimates its value in the
population (a ratio estimator), and its interval resamples the patients actually drawn, within
the design's cells (patients of equal weight: the strata whose sizes the design fixed). Functions
given design weights also report the unweighted numbers and the raw counts beside them.
"""

from __future__ import annotations

import warnings
from typing import Callable, Iterator, Sequence

import numpy as np
from rouge_score import rouge_scorer

# Bound on the resample-weight matrix (resamples x patients) held at once: about 80 MB as int64.
_MAX_WEIGHT_ENTRIES = 10_000_000


# ---------------------------------------------------------------- bootstrap
def bootstrap_weights(n: int, num_samples: int, seed: int, cells: np.ndarray | None = None
                      ) -> Iterator[np.ndarray]:
  """Yields int64 [b, n] blocks of multinomial resample counts, `num_samples` rows in all.

  With `cells` (int [n], e.g. `design_cells`) each resample draws, within every cell, as many
  patients as the cell holds: the stratified bootstrap of a stratified design, whose cells' sizes
  were fixed by the design, not drawn."""
  rng = np.random.default_rng(seed)
  block = max(1, min(num_samples, _MAX_WEIGHT_ENTRIES // max(n, 1)))
  members = None
  if cells is not None and len(np.unique(cells)) > 1:
    order = np.argsort(cells, kind="stable")
    _, start, size = np.unique(np.asarray(cells)[order], return_index=True, return_counts=True)
    members = (order, np.repeat(start, size), np.repeat(size, size))
  done = 0
  while done < num_samples:
    b = min(block, num_samples - done)
    if members is not None:  # slot j of the sorted order draws a member of its own cell
      order, cell_start, cell_size = members
      idx_bxn = order[cell_start + np.floor(rng.random((b, n)) * cell_size).astype(np.int64)]
    else:
      idx_bxn = rng.integers(0, n, size=(b, n)) if n else np.zeros((b, 0), np.int64)
    flat = (np.arange(b)[:, None] * n + idx_bxn).ravel()
    yield np.bincount(flat, minlength=b * n).reshape(b, n)
    done += b


def design_cells(weights) -> np.ndarray | None:
  """int [n]: the design's cells, i.e. patients of equal design weight (a stratified draw gives
  every patient of one stratum the same inclusion probability); None without weights."""
  if weights is None:
    return None
  return np.unique(np.round(np.asarray(weights, np.float64), 9), return_inverse=True)[1]


def bootstrap(stat: Callable[[np.ndarray], np.ndarray], n: int, num_samples: int, seed: int,
              level: float = 0.95, cells: np.ndarray | None = None) -> dict:
  """Point estimate and percentile interval of `stat`, a function of weights [b, n] -> [b] or
  [b, k]. Returns {"value", "ci95": [lo, hi], "bootstrap_defined": fraction of resamples where the
  statistic is defined} (arrays of values and intervals when `stat` returns k numbers). `cells`:
  resample within them (`bootstrap_weights`)."""
  value = stat(np.ones((1, n), np.int64))[0]
  draws = np.concatenate([stat(w) for w in bootstrap_weights(n, num_samples, seed, cells)]) \
      if num_samples else np.zeros((0,) + np.shape(value))
  lo, hi = _nan_percentiles(draws, [50 * (1 - level), 50 * (1 + level)])
  defined = float(np.mean(np.isfinite(draws))) if len(draws) else 0.0
  return dict(value=_py(value), ci95=[_py(lo), _py(hi)], bootstrap_defined=defined)


def _nan_percentiles(draws: np.ndarray, qs: list[float]) -> tuple[np.ndarray, np.ndarray]:
  """Percentiles over axis 0 ignoring NaN; NaN where no resample is defined."""
  finite = np.isfinite(draws)
  if draws.size == 0 or not finite.any():
    shape = draws.shape[1:]
    return np.full(shape, np.nan), np.full(shape, np.nan)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is expected to give NaN
    lo, hi = np.nanpercentile(np.where(finite, draws, np.nan), qs, axis=0)
  return lo, hi


def _py(x):
  """numpy scalar/array -> float / list of floats, NaN -> None (JSON has no NaN)."""
  if np.ndim(x) == 0:
    x = float(x)
    return None if not np.isfinite(x) else x
  return [_py(v) for v in np.asarray(x)]


def _design(weights, n: int) -> np.ndarray | None:
  """Design weights as float64 [n], or None when absent or all equal (nothing to undo)."""
  if weights is None:
    return None
  w = np.asarray(weights, np.float64)
  if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w <= 0):
    raise ValueError(f"design weights must be {n} positive finite numbers, got shape {w.shape}")
  return None if n == 0 or np.all(w == w[0]) else w


def _weighted(stat: Callable[[np.ndarray], np.ndarray], design: np.ndarray | None):
  return stat if design is None else (lambda w: stat(w * design))


def mean_ci(x: np.ndarray, num_samples: int, seed: int, weights: np.ndarray | None = None) -> dict:
  """Mean of `x` with its bootstrap interval (weighted by design `weights` when given)."""
  x = np.asarray(x, np.float64)
  n = len(x)

  def stat(w):
    with np.errstate(invalid="ignore", divide="ignore"):
      return (w @ x) / w.sum(axis=1) if n else np.full(len(w), np.nan)
  design = _design(weights, n)
  return bootstrap(_weighted(stat, design), n, num_samples, seed, cells=design_cells(design))


# ---------------------------------------------------------------- classification of the target
def precision_recall_f1(pred: np.ndarray, true: np.ndarray, weights: np.ndarray | None = None
                        ) -> np.ndarray:
  """float [b, 3]: (precision, recall, F1) per weight row, 0 where undefined (see module doc)."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  if pred.shape != true.shape:
    raise ValueError(f"pred and true differ in shape: {pred.shape} vs {true.shape}")
  w = np.ones((1, len(pred)), np.int64) if weights is None else np.atleast_2d(weights)
  tp = w @ (pred & true).astype(w.dtype)
  fp = w @ (pred & ~true).astype(w.dtype)
  fn = w @ (~pred & true).astype(w.dtype)
  precision = np.divide(tp, tp + fp, out=np.zeros(len(w)), where=(tp + fp) > 0)
  recall = np.divide(tp, tp + fn, out=np.zeros(len(w)), where=(tp + fn) > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(w)),
                 where=(precision + recall) > 0)
  return np.stack([precision, recall, f1], axis=1)


def target_fidelity(pred: np.ndarray, true: np.ndarray, num_samples: int, seed: int,
                    weights: np.ndarray | None = None) -> dict:
  """Precision, recall and F1 of "the target is generated" vs "the target is in the truth", and
  the two prevalences (fractions of patients predicted / truly positive). With design `weights`
  these estimate the population's values; `unweighted` holds the sample's own, and `counts` are
  always raw patient counts."""
  pred, true = np.asarray(pred, bool), np.asarray(true, bool)
  design = _design(weights, len(pred))

  def stat(w):
    with np.errstate(invalid="ignore", divide="ignore"):
      total = w.sum(axis=1, keepdims=True)
      prevalence = np.concatenate([w @ pred.astype(np.float64)[:, None], w @ true.astype(np.float64)[:, None]],
                                  axis=1) / total
    return np.concatenate([precision_recall_f1(pred, true, w), prevalence], axis=1)
  names = ("precision", "recall", "f1", "predicted_prevalence", "true_prevalence")

  def table(boot):
    return {name: dict(value=boot["value"][i], ci95=[boot["ci95"][0][i], boot["ci95"][1][i]])
            for i, name in enumerate(names)}
  out = table(bootstrap(_weighted(stat, design), len(pred), num_samples, seed, cells=design_cells(design)))
  out["weighted"] = design is not None
  if design is not None:
    out["unweighted"] = table(bootstrap(stat, len(pred), num_samples, seed))
  out["counts"] = dict(
      patients=int(len(pred)), true_positive=int((pred & true).sum()),
      predicted_positive=int(pred.sum()), actual_positive=int(true.sum()),
      precision_by_convention=bool(pred.sum() == 0), recall_by_convention=bool(true.sum() == 0))
  return out


def calibration_ratio(pred: np.ndarray, true: np.ndarray, num_samples: int, seed: int,
                      weights: np.ndarray | None = None) -> dict:
  """Target prevalence in the generated continuations over that in the true ones (1: the
  generator writes the target as often as the truth has it; <1 under-, >1 over-generation), with
  its bootstrap interval over patients and the two raw counts (weighted by design `weights`)."""
  pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)

  def stat(w):
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(w @ true > 0, (w @ pred) / (w @ true), np.nan)
  design = _design(weights, len(pred))
  out = bootstrap(_weighted(stat, design), len(pred), num_samples, seed, cells=design_cells(design))
  out.update(generated=int(pred.sum()), true=int(true.sum()), patients=int(len(pred)))
  return out


def _runs(x) -> list[np.ndarray]:
  """One array per run: an array is one run, a list holds several (seeds)."""
  return [np.asarray(r) for r in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]


def paired_difference(pred_a, pred_b, true: np.ndarray, rouge_a, rouge_b, num_samples: int, seed: int,
                      weights: np.ndarray | None = None) -> dict:
  """Method A minus method B on the same patients: precision, recall, F1 of the target and mean
  ROUGE-1, each with a paired bootstrap interval (one resample of patients scores both methods, so
  the interval reflects the difference, not two independent spreads).

  Each of pred_a, pred_b, rouge_a, rouge_b may be a list with one array per training seed (runs
  of the same patients): the difference is then the mean over seeds of each seed's difference,
  inside every resample, so the interval pools the seeds over the same patients."""
  pa, pb = [r.astype(bool) for r in _runs(pred_a)], [r.astype(bool) for r in _runs(pred_b)]
  ra, rb = [r.astype(np.float64) for r in _runs(rouge_a)], [r.astype(np.float64) for r in _runs(rouge_b)]
  true = np.asarray(true, bool)
  if not (len(pa) == len(pb) == len(ra) == len(rb)) or \
      any(len(x) != len(true) for x in pa + pb + ra + rb):
    raise ValueError("paired_difference needs one row per patient, the same patients for both methods")

  def stat(w):
    diffs = []
    for a, b, x, y in zip(pa, pb, ra, rb):
      prf = precision_recall_f1(a, true, w) - precision_recall_f1(b, true, w)
      with np.errstate(invalid="ignore", divide="ignore"):
        rouge = (w @ (x - y)) / w.sum(axis=1)
      diffs.append(np.concatenate([prf, rouge[:, None]], axis=1))
    return np.mean(diffs, axis=0)
  design = _design(weights, len(true))
  boot = bootstrap(_weighted(stat, design), len(true), num_samples, seed, cells=design_cells(design))
  out = {name: dict(value=boot["value"][i], ci95=[boot["ci95"][0][i], boot["ci95"][1][i]])
         for i, name in enumerate(("precision", "recall", "f1", "rouge1"))}
  out["patients"], out["actual_positive"], out["seeds"] = int(len(true)), int(true.sum()), len(pa)
  return out


def paired_auroc_difference(scores_a, scores_b, labels: np.ndarray, num_samples: int, seed: int,
                            weights: np.ndarray | None = None) -> dict:
  """AUROC of scores A minus that of scores B on the same patients, with a paired bootstrap
  interval (one resample of patients scores both); lists of arrays pool seeds as
  `paired_difference` does."""
  sa, sb = _runs(scores_a), _runs(scores_b)
  labels = np.asarray(labels, bool)
  if len(sa) != len(sb) or any(len(x) != len(labels) for x in sa + sb):
    raise ValueError("paired_auroc_difference needs one score per patient from each method")

  def stat(w):
    return np.mean([auroc(a, labels, w) - auroc(b, labels, w) for a, b in zip(sa, sb)], axis=0)
  design = _design(weights, len(labels))
  out = bootstrap(_weighted(stat, design), len(labels), num_samples, seed,
                  cells=design_cells(design))
  out["seeds"] = len(sa)
  return out


# ---------------------------------------------------------------- ranking metrics
def _tie_groups(sorted_scores: np.ndarray) -> np.ndarray:
  """Start index of each run of equal values in a sorted array."""
  if len(sorted_scores) == 0:
    return np.zeros(0, np.int64)
  return np.flatnonzero(np.concatenate([[True], sorted_scores[1:] != sorted_scores[:-1]]))


def auroc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """float [b]: area under the ROC curve per weight row (ties count one half); NaN without both
  classes. Equal to sklearn's `roc_auc_score(labels, scores, sample_weight=w)`."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  w = np.ones((1, len(scores)), np.int64) if weights is None else np.atleast_2d(weights)
  if len(scores) == 0:
    return np.full(len(w), np.nan)
  order = np.argsort(scores, kind="stable")
  starts = _tie_groups(scores[order])
  w, y = w[:, order].astype(np.float64), labels[order]
  pos_bxg = np.add.reduceat(w * y, starts, axis=1)
  neg_bxg = np.add.reduceat(w * ~y, starts, axis=1)
  neg_below = np.cumsum(neg_bxg, axis=1) - neg_bxg  # negatives with a strictly lower score
  num = (pos_bxg * (neg_below + 0.5 * neg_bxg)).sum(axis=1)
  den = pos_bxg.sum(axis=1) * neg_bxg.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / den, np.nan)


def auprc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """float [b]: average precision (sum over thresholds of recall gain x precision), sklearn's
  `average_precision_score` definition; NaN without both classes."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  w = np.ones((1, len(scores)), np.int64) if weights is None else np.atleast_2d(weights)
  if len(scores) == 0:
    return np.full(len(w), np.nan)
  order = np.argsort(-scores, kind="stable")
  starts = _tie_groups(scores[order])
  w, y = w[:, order].astype(np.float64), labels[order]
  tp = np.cumsum(np.add.reduceat(w * y, starts, axis=1), axis=1)
  fp = np.cumsum(np.add.reduceat(w * ~y, starts, axis=1), axis=1)
  total_pos, total_neg = tp[:, -1:], fp[:, -1:]
  precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
  recall = np.divide(tp, total_pos, out=np.zeros_like(tp), where=total_pos > 0)
  gain = np.diff(recall, axis=1, prepend=0.0)
  ap = (gain * precision).sum(axis=1)
  return np.where((total_pos[:, 0] > 0) & (total_neg[:, 0] > 0), ap, np.nan)


def ranking_metrics(scores: np.ndarray, labels: np.ndarray, num_samples: int, seed: int,
                    weights: np.ndarray | None = None) -> dict:
  """AUROC and AUPRC with bootstrap intervals (the same resamples for both; weighted by design
  `weights` when given: AUPRC depends on prevalence, AUROC on the mix within each class)."""
  def stat(w):
    return np.stack([auroc(scores, labels, w), auprc(scores, labels, w)], axis=1)
  design = _design(weights, len(scores))
  boot = bootstrap(_weighted(stat, design), len(scores), num_samples, seed,
                   cells=design_cells(design))
  return {name: dict(value=boot["value"][i], ci95=[boot["ci95"][0][i], boot["ci95"][1][i]])
          for i, name in enumerate(("auroc", "auprc"))}


# ---------------------------------------------------------------- ROUGE-1
class _CodeTokenizer:
  """rouge-score tokenizer over sequences of code strings: each code is one word, unchanged.

  rouge-score's default tokenizer lowercases and splits on non-alphanumerics, which would cut
  `ICD10CM/E119` into two words and merge codes that differ only by punctuation.
  """

  def tokenize(self, codes: Sequence[str]) -> list[str]:
    return list(codes)


_SCORER = rouge_scorer.RougeScorer(["rouge1"], tokenizer=_CodeTokenizer())


def rouge1(references: Sequence[Sequence[str]], predictions: Sequence[Sequence[str]]) -> np.ndarray:
  """float [N, 3]: ROUGE-1 (precision, recall, F-measure) of each prediction against its reference,
  computed by the rouge-score package with codes as words. Two empty sequences score 0."""
  if len(references) != len(predictions):
    raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
  out = np.zeros((len(references), 3))
  for i, (ref, pred) in enumerate(zip(references, predictions)):
    s = _SCORER.score(ref, pred)["rouge1"]
    out[i] = (s.precision, s.recall, s.fmeasure)
  return out


# ---------------------------------------------------------------- prevalence agreement
def agreement_rows(real: np.ndarray, synthetic: np.ndarray, weights_bxc: np.ndarray | None = None
                   ) -> np.ndarray:
  """float [b, 2]: per row, Pearson r between real and synthetic values and R^2 of synthetic as a
  prediction of real on the identity line (1 - SS(real - synthetic) / SS(real - mean real));
  NaN where undefined (a constant row). `real` and `synthetic` are [b, C] rows or [C] vectors;
  `weights_bxc` (resample counts of the C items, as `bootstrap_weights` draws them) weights each
  item, so a count of k is the item repeated k times."""
  real, syn = np.atleast_2d(np.asarray(real, np.float64)), np.atleast_2d(np.asarray(synthetic, np.float64))
  w = np.ones(np.broadcast_shapes(real.shape, syn.shape)) if weights_bxc is None \
      else np.asarray(weights_bxc, np.float64)
  total = w.sum(axis=1, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    rc = real - (w * real).sum(axis=1, keepdims=True) / total
    sc = syn - (w * syn).sum(axis=1, keepdims=True) / total
    ss_real, ss_syn = (w * rc ** 2).sum(axis=1), (w * sc ** 2).sum(axis=1)
    varies_real, varies_syn = _varies(real, w), _varies(syn, w)
    r = np.where(varies_real & varies_syn, (w * rc * sc).sum(axis=1) / np.sqrt(ss_real * ss_syn), np.nan)
    r2 = np.where(varies_real, 1.0 - (w * (real - syn) ** 2).sum(axis=1) / ss_real, np.nan)
  return np.stack([r, r2], axis=1)


def _varies(x_bxc: np.ndarray, w_bxc: np.ndarray) -> np.ndarray:
  """bool [b]: the row takes two or more values over its items of positive weight (exactly, not
  up to the rounding of a weighted mean)."""
  drawn = w_bxc > 0
  return (np.where(drawn, x_bxc, -np.inf).max(axis=1) > np.where(drawn, x_bxc, np.inf).min(axis=1))


def agreement(real: np.ndarray, synthetic: np.ndarray) -> dict:
  """Pearson r and identity-line R^2 (see `agreement_rows`) of two vectors; None where undefined."""
  r, r2 = agreement_rows(real, synthetic)[0] if len(real) else (np.nan, np.nan)
  return dict(pearson_r=_py(r), r2_identity=_py(r2), num_codes=int(len(real)))
