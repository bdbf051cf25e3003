"""The generator as a forecaster of the rare target: how often it writes the target (calibration)
and for whom (discrimination), per stratum, beside anchors that say what is achievable.

For each evaluated patient the generator draws K continuations of the next T events (T =
`eval.truncate_events`, the true continuation's length). Two per-patient quantities come out:

  h_i  hits: how many of K ordinary draws hold a target code in their first T events;
  p_i  the model's probability that the next T events hold a target code. For a decoder it is
       estimated from K draws with the target codes masked out: at each step the sampler returns
       q_t, the target codes' share of the sampling distribution, and
           p_i = mean over draws of 1 - prod_t (1 - q_t),
       which is unbiased for the exact probability (`rltf_jax.sampling.sampler`) and, unlike
       h_i / K, is not 0 for nearly every patient at an affordable K. Generators without
       probabilities (LSTM, HALO) use p_i = h_i / K (`probability_source` says which).

Metrics of p against y_i (the true continuation holds the target), per stratum (all, new onset:
no target in the prompt, repeat: target in the prompt), on the validation patients and weighted by
the design weights (1 / inclusion probability) so that they estimate the population's values:

  calibration      sum w p / sum w y        (1: as often as the truth; `never` gives 0)
  auroc, auprc     of p against y           (ties count one half; a constant p gives 0.5)
  brier            sum w (p - y)^2 / sum w
  expected_recall  sum w y p / sum w y      (the recall a draw from the model has in expectation)

Intervals resample patients within the design's cells (`metrics.bootstrap`, cells = patients of
equal weight). Anchors, on the same patients through the same code:

  truth        p = y (a copy of the true continuation): calibration 1, AUROC 1
  never        p = 0: calibration 0, AUROC 0.5
  prompt_rule  p = 1 where the prompt holds the target, else 0
  ceiling      CatBoost on the prompt alone (code counts, length, age), fitted on the modelling
               patients (no validation patient is among them), its scores recalibrated to the
               population by a design-weighted logistic fit on cross-fitted modelling scores: the
               discrimination a calibrated generator can hope for from the prompt
  logit_bias   the base model with one scalar b added to the target codes' logits, b tuned on the
               modelling patients so that their calibration is 1: what calibration costs with no
               training; stratum_bias the same with one b per stratum (as
               `rltf_jax.evaluation.calibration` calibrates a fine-tune). Adding b leaves the masked draws unchanged (the non-target codes'
               distribution does not depend on it) and turns each q_t into
               q e^b / (q e^b + 1 - q), so p(b) is exact from the base model's draws.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rltf_jax import io
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import DataError
from rltf_jax.evaluation import conditional, metrics, utility

STRATA = ("all", "new_onset", "repeat")
SELF = "self"  # `base_draws` of the base model's own evaluation: its own draws tune the bias
ANCHORS = ("ceiling", "prompt_rule", "logit_bias", "stratum_bias", "truth", "never")
RELIABILITY_BINS = (0.0, 1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.2, 0.5, 1.0)


# ---------------------------------------------------------------- the estimator
def biased_mass(mass: np.ndarray, bias: float) -> np.ndarray:
  """Each step's target probability after adding `bias` to the target codes' scaled logits."""
  q = np.asarray(mass, np.float64)
  if bias == 0.0:
    return q
  scale = np.exp(bias)
  with np.errstate(invalid="ignore", over="ignore"):
    out = q * scale / (q * scale + 1.0 - q)
  return np.where(q >= 1.0, 1.0, np.nan_to_num(out, nan=1.0))


def target_probability(mass: np.ndarray, bias: float = 0.0) -> np.ndarray:
  """float64 [N]: p_i from `target_mass` [N, K, T] of masked draws (module doc)."""
  q = biased_mass(mass, bias)
  free = np.exp(np.log1p(-np.clip(q, 0.0, 1.0 - 1e-15)).sum(-1))  # P(no target) along each draw
  free = np.where((q >= 1.0).any(-1), 0.0, free)
  return (1.0 - free).mean(-1)


def tune_bias(mass: np.ndarray, truth: np.ndarray, weights: np.ndarray, lo: float = -20.0,
              hi: float = 30.0, steps: int = 80) -> float:
  """The logit bias b at which sum w p(b) = sum w y (bisection: p(b) increases with b)."""
  truth, weights = np.asarray(truth, np.float64), np.asarray(weights, np.float64)
  goal = weights @ truth
  calib = lambda b: weights @ target_probability(mass, b) - goal
  if calib(hi) < 0:
    return hi
  if calib(lo) > 0:
    return lo
  for _ in range(steps):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if calib(mid) < 0 else (lo, mid)
  return 0.5 * (lo + hi)


def stratum_biases(mass: np.ndarray, truth: np.ndarray, in_prompt: np.ndarray,
                   weights: np.ndarray) -> dict:
  """{"new_onset": b, "repeat": b}: each stratum's bias at which sum w p(b) = sum w y (0 for an
  empty stratum)."""
  in_prompt = np.asarray(in_prompt, bool)
  return {name: float(tune_bias(mass[m], truth[m], weights[m])) if m.any() else 0.0
          for name, m in (("new_onset", ~in_prompt), ("repeat", in_prompt))}


# ---------------------------------------------------------------- metrics
def _stats(p: np.ndarray, y: np.ndarray):
  """A function of weights [b, n] -> [b, 5]: calibration, AUROC, AUPRC, Brier, expected recall."""
  yf = y.astype(np.float64)

  def stat(w):
    w = np.atleast_2d(w).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
      wy, wp, ws = w @ yf, w @ p, w.sum(1)
      calibration = np.where(wy > 0, wp / wy, np.nan)
      brier = (w @ (p - yf) ** 2) / ws
      expected_recall = np.where(wy > 0, (w @ (yf * p)) / wy, np.nan)
    return np.stack([calibration, metrics.auroc(p, y, w), metrics.auprc(p, y, w), brier,
                     expected_recall], axis=1)
  return stat


METRICS = ("calibration", "auroc", "auprc", "brier", "expected_recall")


def stratum_metrics(p, y, weights, num_samples: int, seed: int) -> dict:
  """The five metrics of p against y with intervals, plus counts (positives, patients)."""
  p, y, weights = np.asarray(p, np.float64), np.asarray(y, bool), np.asarray(weights, np.float64)
  stat = _stats(p, y)
  boot = metrics.bootstrap(lambda w: stat(w * weights), len(p), num_samples, seed,
                           cells=metrics.design_cells(weights))
  out = {name: dict(value=boot["value"][i], ci95=[boot["ci95"][0][i], boot["ci95"][1][i]])
         for i, name in enumerate(METRICS)}
  out.update(positives=int(y.sum()), patients=int(len(y)),
             expected_hits=float(p[y].sum()), predicted_mass=float(p.sum()))
  return out


def reliability(p, y, weights, edges=RELIABILITY_BINS) -> dict:
  """Binned p against the observed rate (design-weighted), with each bin's patient count."""
  p, y, w = np.asarray(p, np.float64), np.asarray(y, np.float64), np.asarray(weights, np.float64)
  edges = np.asarray(edges, np.float64)
  b = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
  rows = []
  for i in range(len(edges) - 1):
    m = b == i
    if not m.any():
      continue
    rows.append(dict(lo=float(edges[i]), hi=float(edges[i + 1]), patients=int(m.sum()),
                     positives=int(y[m].sum()), mean_p=float(w[m] @ p[m] / w[m].sum()),
                     observed=float(w[m] @ y[m] / w[m].sum())))
  return dict(bins=rows)


def strata_masks(in_prompt: np.ndarray) -> dict[str, np.ndarray]:
  in_prompt = np.asarray(in_prompt, bool)
  return dict(all=np.ones_like(in_prompt), new_onset=~in_prompt, repeat=in_prompt)


def by_stratum(p, y, in_prompt, weights, num_samples: int, seed: int) -> dict:
  """`stratum_metrics` and the reliability curve for each of STRATA."""
  out = {}
  for name, m in strata_masks(in_prompt).items():
    out[name] = stratum_metrics(p[m], y[m], weights[m], num_samples, seed)
    out[name]["reliability"] = reliability(p[m], y[m], weights[m])
  return out


def paired_differences(p_a, p_b, y, in_prompt, weights, num_samples: int, seed: int) -> dict:
  """Method A minus method B on the same patients, per stratum: calibration and AUROC with a
  paired interval (one resample scores both). p_a / p_b may be lists (one per training seed):
  the difference is then the mean over seeds inside every resample, as the reproduction pools."""
  runs_a, runs_b = metrics._runs(p_a), metrics._runs(p_b)
  out = {}
  for name, m in strata_masks(in_prompt).items():
    y_m, w_m = np.asarray(y, bool)[m], np.asarray(weights, np.float64)[m]

    def stat(w, m=m, y_m=y_m, w_m=w_m):
      diffs = [(_stats(a[m], y_m)(w * w_m) - _stats(b[m], y_m)(w * w_m))[:, :2]
               for a, b in zip(runs_a, runs_b)]
      return np.mean(diffs, axis=0)
    boot = metrics.bootstrap(stat, int(m.sum()), num_samples, seed, cells=metrics.design_cells(w_m))
    out[name] = {k: dict(value=boot["value"][i], ci95=[boot["ci95"][0][i], boot["ci95"][1][i]])
                 for i, k in enumerate(("calibration", "auroc"))}
    out[name]["seeds"] = len(runs_a)
  return out


# ---------------------------------------------------------------- draws (cached like the generations)
def draw_cached(generator, prompts: PatientEvents, target_codes, *, horizon: int, samples: int,
                seed: int, first_draw_hits: np.ndarray, hit_rows: np.ndarray, mass_rows: np.ndarray,
                path: Path) -> dict[str, np.ndarray]:
  """K draws per prompt of `hit_rows`: `hits` int [N] (draw 0 is the evaluation's own generation,
  whose first `horizon` events `first_draw_hits` says hold the target; K - 1 further ordinary
  draws; -1 for rows not drawn) and, for a generator with probabilities, `target_mass`
  f32 [N, K, horizon] from K masked draws of `mass_rows` (NaN elsewhere). Saved at `path` and read
  back when it holds the same patients, rows and K."""
  path = Path(path)
  n = prompts.num_patients
  key = dict(subject_id=prompts.subject_id, samples=np.int64(samples), hit_rows=np.asarray(hit_rows),
             mass_rows=np.asarray(mass_rows))
  if path.exists():
    cached = io.load_npz(path)
    if all(np.array_equal(cached.get(k), v) for k, v in key.items()):
      return cached
    raise DataError(f"{path} holds forecast draws of other patients or another K; delete it to redraw")
  hits = np.full(n, -1, np.int64)
  hits[hit_rows] = np.asarray(first_draw_hits, np.int64)[hit_rows]
  out = dict(key)
  with_hits = prompts.select(hit_rows)
  if hasattr(generator, "forecast"):
    if samples > 1:
      hits[hit_rows] += generator.forecast(with_hits, target_codes, horizon=horizon,
                                           samples=samples - 1, seed=seed + 1, masked=False)["hits"]
    mass = np.full((n, samples, horizon), np.nan, np.float32)
    mass[mass_rows] = generator.forecast(prompts.select(mass_rows), target_codes, horizon=horizon,
                                         samples=samples, seed=seed + 2, masked=True)["target_mass"]
    out["target_mass"] = mass
  else:
    for k in range(1, samples):  # no probabilities: K ordinary completions
      more = generator.complete(with_hits, max_new_events=horizon, seed=seed + 10 + k)
      hits[hit_rows] += conditional.head(more, horizon).patients_with_any(target_codes)
  out["hits"] = hits
  io.atomic_savez(path, **out)
  return out


def probability(draws: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
  """(p_i, how it was estimated) from `draw_cached`'s draws; NaN for rows not drawn."""
  if "target_mass" in draws:
    return target_probability(draws["target_mass"]), "masked draws (exact in expectation)"
  hits = draws["hits"].astype(np.float64)
  return (np.where(hits >= 0, hits / float(draws["samples"]), np.nan),
          "hits / K (the generator exposes no probabilities)")


# ---------------------------------------------------------------- the ceiling anchor
def prompt_features(prompts: PatientEvents, fit_rows: np.ndarray) -> sp.csr_matrix:
  """Code counts of the prompt (codes at least two fitting patients hold, the target's included:
  a prompt that holds it is the strongest sign), its length and the age at its last event."""
  fit = prompts.select(fit_rows)
  codes = utility.record_features(fit, target_codes=())
  counts = utility.count_matrix(prompts, codes)
  last = np.maximum(prompts.offsets[1:] - 1, 0)
  age = np.where(prompts.lengths > 0, prompts.age[last] if prompts.num_events else 0.0, -1.0)
  dense = np.stack([np.log1p(prompts.lengths), age], axis=1).astype(np.float32)
  return sp.csr_matrix(sp.hstack([counts, sp.csr_matrix(dense)]))


def ceiling_probability(prompts: PatientEvents, truth: np.ndarray, weights: np.ndarray,
                        fit_rows: np.ndarray, *, iterations: int, threads: int, depth: int,
                        seed: int, fits: utility.FitCache | None = None) -> np.ndarray:
  """float64 [N]: P(the true continuation holds the target | prompt) for every patient, from
  CatBoost fitted on `fit_rows` only. Two folds of `fit_rows` score each other (cross-fitted
  scores) and every other patient; a design-weighted logistic fit of the truth on the cross-fitted
  scores' logits maps a score to a population probability, and another patient's probability is
  the mean of its two mapped scores."""
  from sklearn.linear_model import LogisticRegression
  X, y = prompt_features(prompts, fit_rows), np.asarray(truth, bool)
  if y[fit_rows].all() or not y[fit_rows].any():
    return np.full(len(y), float(y[fit_rows].mean()) if len(fit_rows) else 0.0)
  fold = np.zeros(len(y), np.int64)
  fold[fit_rows] = np.random.default_rng(seed).permutation(len(fit_rows)) % 2
  others = np.setdiff1d(np.arange(len(y)), fit_rows)
  held_score, other_score = np.zeros(len(y)), np.zeros((2, len(others)))
  for f in (0, 1):
    train, held = fit_rows[fold[fit_rows] == f], fit_rows[fold[fit_rows] != f]
    s, _ = utility.fit_and_score(X[train], y[train], X[np.concatenate([held, others])],
                                 iterations=iterations, threads=threads, seed=seed, depth=depth,
                                 fits=fits)
    held_score[held], other_score[f] = s[:len(held)], s[len(held):]
  logit = lambda s: np.log(np.clip(s, 1e-6, 1 - 1e-6) / np.clip(1 - s, 1e-6, 1))[:, None]
  platt = LogisticRegression(C=1e6).fit(logit(held_score[fit_rows]), y[fit_rows],
                                        sample_weight=np.asarray(weights, np.float64)[fit_rows])
  out = np.zeros(len(y))
  out[fit_rows] = platt.predict_proba(logit(held_score[fit_rows]))[:, 1]
  out[others] = np.mean([platt.predict_proba(logit(s))[:, 1] for s in other_score], axis=0)
  return out


# ---------------------------------------------------------------- the evaluator
def evaluate(plan, results: dict) -> tuple[dict, dict]:
  """Evaluator `forecast`: {"forecast"} and the per-patient hits, p and anchors' p."""
  del results
  base = plan.base_forecast
  base_draws = base if base is None or (isinstance(base, str) and base == SELF) else io.load_npz(base)
  result, arrays = forecast_target(plan.generator, plan.prompts, plan.in_true, plan.in_prompt,
                                   plan.in_generated, plan.weights, plan.valid, plan.cohort.codes,
                                   plan.cfg, plan.out, base_draws=base_draws, fits=plan.fits)
  return dict(forecast=result), arrays


def forecast_target(generator, prompts: PatientEvents, truth: np.ndarray, in_prompt: np.ndarray,
             first_draw_hits: np.ndarray, weights: np.ndarray, valid: np.ndarray, target_codes,
             cfg, out_dir: Path, base_draws: dict | None = None,
             fits: utility.FitCache | None = None) -> tuple[dict, dict]:
  """The forecast part of `metrics.json` and its per-patient arrays, for every test patient's
  draws, scored on the validation patients (`valid`); the modelling patients fit the ceiling and
  tune the logit bias. `base_draws`: the base model's `draw_cached` draws on the same patients
  (None: the logit-bias anchor is not computed, and the report says so); `fits`: finished
  CatBoost fits shared with other evaluations of the same patients (the ceiling's)."""
  T, K, B, seed = int(cfg.truncate_events), int(cfg.forecast_samples), int(cfg.bootstrap_samples), int(cfg.seed)
  truth, in_prompt, valid = np.asarray(truth, bool), np.asarray(in_prompt, bool), np.asarray(valid, bool)
  fit_rows, valid_rows = np.flatnonzero(~valid), np.flatnonzero(valid)
  # The base model draws every patient (its modelling patients' draws tune the logit bias); any
  # other method only the validation patients it is scored on.
  is_base = isinstance(base_draws, str) and base_draws == SELF
  draws = draw_cached(generator, prompts, target_codes, horizon=T, samples=K, seed=seed + 3,
                      first_draw_hits=first_draw_hits, hit_rows=valid_rows,
                      mass_rows=np.arange(len(truth)) if is_base else valid_rows,
                      path=Path(out_dir) / "test_forecast.npz")
  p, source = probability(draws)
  anchors = dict(truth=truth.astype(np.float64), never=np.zeros(len(truth)),
                 prompt_rule=in_prompt.astype(np.float64))
  anchors["ceiling"] = ceiling_probability(
      prompts, truth, weights, fit_rows, iterations=int(cfg.catboost_iterations),
      threads=int(cfg.catboost_threads), depth=int(cfg.catboost_depth), seed=seed, fits=fits)
  bias = None
  base_draws = draws if is_base else base_draws
  if base_draws is not None and "target_mass" in base_draws:
    if not np.array_equal(base_draws["subject_id"], prompts.subject_id):
      raise DataError("the base model's forecast draws are of other patients than this evaluation's")
    mass = base_draws["target_mass"]
    bias = tune_bias(mass[fit_rows], truth[fit_rows], weights[fit_rows])
    anchors["logit_bias"] = target_probability(mass, bias)
    # One bias per stratum (new onset, repeat), as `calibration.calibrate` tunes a fine-tune's.
    biases = stratum_biases(mass[fit_rows], truth[fit_rows], in_prompt[fit_rows], weights[fit_rows])
    anchors["stratum_bias"] = np.where(in_prompt, target_probability(mass, biases["repeat"]),
                                       target_probability(mass, biases["new_onset"]))
  v = valid
  result = dict(samples=K, horizon=T, probability=source, population="validation",
                strata=by_stratum(p[v], truth[v], in_prompt[v], weights[v], B, seed),
                hits=dict(mean_hits_per_patient=float(draws["hits"][v].mean()) if v.any() else 0.0,
                          mean_p_times_k=float(p[v].mean() * K) if v.any() else 0.0),
                anchors={name: by_stratum(a[v], truth[v], in_prompt[v], weights[v], B, seed)
                         for name, a in anchors.items()},
                logit_bias=None if bias is None else float(bias))
  arrays = dict(test_target_hits=draws["hits"], forecast_samples=np.int64(K), test_target_prob=p,
                **{f"anchor_{name}_prob": a for name, a in anchors.items()})
  return result, arrays
