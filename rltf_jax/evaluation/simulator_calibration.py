"""A simulator draw's checkable properties: what `python -m rltf_jax.data.simulate --report` prints.

Sizes and code spread, each cohort's prevalence against the paper's, where the target first
appears, relative risks that show the history at work, and how well the non-target history
predicts each cohort: a cheap proxy on the draw itself (cross-fitted CatBoost AUROC at true
rarity, `cohort_aurocs`) and the evaluation's real-record AUROC measured the evaluation's way on a
separate enriched draw (`calibration_aurocs`), the number the simulator is calibrated on against
the paper's Table 6 "Real" column (rltf_jax/configs/simulator.py, CALIBRATION).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import sparse
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from rltf_jax.data.codes import CodeType
from rltf_jax.data.cohorts import COHORTS
from rltf_jax.data.events import PatientEvents


def code_count_matrix(ds: PatientEvents):
  """scipy `csr_matrix` [patients, codes] of per-patient code counts (CatBoost takes csr_matrix,
  not the newer sparse arrays)."""
  ones = np.ones(ds.num_events, np.float32)
  m = sparse.csr_matrix((ones, (ds.event_patient(), ds.code)),
                        shape=(ds.num_patients, len(ds.codes)))
  m.sum_duplicates()
  return m


def cohort_aurocs(ds: PatientEvents, *, iterations: int = 30, thread_count: int = 2,
                  seed: int = 0, min_code_patients: int = 50, folds: int = 2,
                  cohorts=None) -> dict[str, dict[str, float]]:
  """How well the history predicts each cohort: CatBoost on per-patient counts of non-target codes.

  Stratified `folds`-fold cross-fitting (fixed seed): every patient is scored by a model that did
  not see them, so even a cohort with seven positives has all seven in the AUROC. Codes seen in
  fewer than `min_code_patients` patients are dropped (speed). Returns per cohort: auroc,
  positives.
  """
  from catboost import CatBoostClassifier  # imported here: slow to import, needed only here
  counts = code_count_matrix(ds)
  frequent = np.asarray((counts > 0).sum(axis=0)).ravel() >= min_code_patients
  out = {}
  for name in cohorts or COHORTS:
    co = COHORTS[name]
    y = ds.patients_with_any(co.codes).astype(np.int64)
    n_pos = int(y.sum())
    if n_pos < folds:
      out[name] = dict(auroc=float("nan"), positives=n_pos)
      continue
    keep = frequent.copy()
    keep[ds.code_ids(co.codes)] = False
    x = counts[:, np.flatnonzero(keep)].tocsr()
    score = np.zeros(ds.num_patients)
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
      model = CatBoostClassifier(iterations=iterations, depth=4, learning_rate=0.3,
                                 border_count=16, random_seed=seed, thread_count=thread_count,
                                 verbose=False, allow_writing_files=False)
      model.fit(x[train], y[train])
      score[test] = model.predict_proba(x[test])[:, 1]
    out[name] = dict(auroc=float(roc_auc_score(y, score)), positives=n_pos)
  return out


def properties(ds: PatientEvents, cfg) -> dict[str, Any]:
  """The draw's checkable properties: sizes, code spread, cohorts, and whether history matters
  (`cfg`: the simulator config the draw was made with)."""
  lens = ds.lengths
  ctype = ds.code_type
  used = ds.code_counts() > 0
  icd = used & (ctype == CodeType.DIAGNOSIS)
  # Long tail: slope of log(events) against log(rank) over ICD-10-CM codes of rank 10..1000.
  freq = np.sort(ds.code_counts()[icd])[::-1]
  ranks = np.arange(10, min(1000, len(freq)))
  slope = float(np.polyfit(np.log(ranks + 1), np.log(freq[ranks]), 1)[0]) if len(ranks) > 10 else float("nan")
  vpp = np.zeros(ds.num_patients, np.int64)
  if ds.num_events:
    last = ds.offsets[1:] - 1
    has = ds.lengths > 0
    vpp[has] = ds.visit[last[has]] + 1
  pos_values, pos_counts = np.unique(ds.pos, return_counts=True)
  out = dict(
      patients=ds.num_patients, events=ds.num_events,
      median_events=float(np.median(lens)), p95_events=float(np.percentile(lens, 95)),
      max_events=int(lens.max()), median_visits=float(np.median(vpp)),
      patients_at_cap=int((lens >= cfg.max_events).sum()),
      distinct_codes=int(used.sum()), distinct_icd10cm=int(icd.sum()),
      distinct_ccspx=int((used & (ctype == CodeType.PROCEDURE)).sum()),
      distinct_atc=int((used & (ctype == CodeType.MEDICATION)).sum()),
      icd10cm_zipf_slope=slope,
      top_icd10cm_share=float(freq[0] / freq.sum()) if len(freq) else 0.0,
      age_min=float(ds.age.min()), age_max=float(ds.age.max()),
      place_of_service_share={int(v): float(c / ds.num_events) for v, c in zip(pos_values, pos_counts)},
  )
  cohorts = {}
  for name, co in COHORTS.items():
    member = ds.patients_with_any(co.codes)
    first = ds.first_position_of_any(co.codes)[member]
    k = int(member.sum())
    cohorts[name] = dict(
        abbrev=co.abbrev, paper_percent=co.paper_frequency_percent, percent=100.0 * k / ds.num_patients,
        ratio=(100.0 * k / ds.num_patients) / co.paper_frequency_percent, positives=k,
        median_first_target_position=float(np.median(first)) if k else float("nan"),
        target_first_event_share=float((first == 0).mean()) if k else float("nan"))
  out["cohorts"] = cohorts
  out["history"] = _history_signal(ds)
  return out


def _history_signal(ds: PatientEvents) -> dict[str, float]:
  """Relative risks that show the history at work (codes seen before the target's first event)."""
  def before(risk_codes, target_codes):
    """Risk of the target among patients with a risk code before it (or ever, if no target)
    against patients without: a relative risk."""
    first_t = ds.first_position_of_any(target_codes)
    first_r = ds.first_position_of_any(risk_codes)
    exposed = (first_r >= 0) & ((first_t < 0) | (first_r < first_t))
    target = first_t >= 0
    a = target[exposed].mean() if exposed.any() else float("nan")
    b = target[~exposed].mean() if (~exposed).any() else float("nan")
    return float(a / b) if b > 0 else float("nan")
  icd = lambda *cs: [f"ICD10CM/{c}" for c in cs]
  ami, shock = COHORTS["ami"].codes, COHORTS["shock"].codes
  out = {
      "ami_rr_given_lipid": before(COHORTS["lipid"].codes, ami),
      "ami_rr_given_dm": before(COHORTS["dm"].codes, ami),
      "ami_rr_given_hypertension": before(icd("I10"), ami),
      "ami_rr_given_cad": before(icd("I2510", "I25119", "I209"), ami),
      "shock_rr_given_sepsis": before(COHORTS["sep"].codes, shock),
      "resp_rr_given_copd": before(icd("J449", "J441", "J439"), COHORTS["resp"].codes),
      "surg_rr_given_surgery": before([f"CCSPX/{n}" for n in (152, 153, 84, 85, 124, 158, 44)],
                                      COHORTS["surg"].codes),
  }
  # Sickle-cell care pattern: emergency-room visits per patient, cohort vs everyone else.
  scd = ds.patients_with_any(COHORTS["scd"].codes)
  er = np.zeros(ds.num_patients)
  er_events = ds.pos == 23
  if ds.num_events:
    # count distinct ER visits: events at pos 23 that open a new visit
    new_visit = np.ones(ds.num_events, bool)
    new_visit[1:] = (np.diff(ds.visit) != 0) | (np.diff(ds.event_patient()) != 0)
    er = ds.count_per_patient(er_events & new_visit)
  out["scd_er_visits_mean"] = float(er[scd].mean()) if scd.any() else float("nan")
  out["others_er_visits_mean"] = float(er[~scd].mean())
  return out


def format_report(props: dict[str, Any], aurocs: dict[str, dict[str, float]] | None = None,
                  paper_auroc: dict[str, float] | None = None,
                  eval_aurocs: dict[str, dict[str, float]] | None = None) -> str:
  """The properties as a readable text table; `paper_auroc` (cohort -> the paper's Table 6 "Real"
  AUROC) is printed beside ours, with how many cohorts lie within 0.05 of it: the evaluation's
  real-record AUROC (`eval_aurocs`, from `calibration_aurocs`) when given, else the proxy
  (`aurocs`, from `cohort_aurocs`)."""
  p = props
  lines = [
      f"patients {p['patients']:,}   events {p['events']:,}   simulated in "
      f"{p.get('seconds', float('nan')):.1f} s",
      f"events per patient: median {p['median_events']:.0f}, p95 {p['p95_events']:.0f}, "
      f"max {p['max_events']} ({p['patients_at_cap']} patients at the cap); visits per patient: "
      f"median {p['median_visits']:.0f}",
      f"distinct codes {p['distinct_codes']:,}: ICD-10-CM {p['distinct_icd10cm']:,}, CCSPX "
      f"{p['distinct_ccspx']}, ATC {p['distinct_atc']}; ICD-10-CM rank-frequency slope "
      f"{p['icd10cm_zipf_slope']:.2f} (Zipf ~ -1), top code {100 * p['top_icd10cm_share']:.1f}% "
      "of diagnoses",
      f"ages {p['age_min']:.1f} to {p['age_max']:.1f}; places of service: " + ", ".join(
          f"{k}: {100 * v:.1f}%" for k, v in sorted(p["place_of_service_share"].items())),
      "",
      f"{'cohort':8s} {'paper %':>8s} {'sim %':>8s} {'ratio':>6s} {'n':>6s} {'1st pos':>8s} "
      f"{'at 0':>5s} {'AUROC':>6s} {'eval':>6s} {'(pos)':>5s} {'paper':>6s} {'':4s}",
  ]
  close = []
  for name, c in p["cohorts"].items():
    auc = aurocs.get(name, {}).get("auroc", float("nan")) if aurocs else float("nan")
    ev = (eval_aurocs or {}).get(name, {})
    ev_auc, ev_pos = ev.get("auroc", float("nan")), ev.get("positives", 0)
    ref = (paper_auroc or {}).get(name, float("nan"))
    ours = ev_auc if eval_aurocs else auc
    within = ""
    if np.isfinite(ours) and np.isfinite(ref):
      close.append(abs(ours - ref) <= 0.05)
      within = "ok" if close[-1] else "off"
    lines.append(f"{c['abbrev']:8s} {c['paper_percent']:8.3f} {c['percent']:8.3f} {c['ratio']:6.2f} "
                 f"{c['positives']:6d} {c['median_first_target_position']:8.0f} "
                 f"{c['target_first_event_share']:5.2f} {auc:6.3f} {ev_auc:6.3f} {ev_pos:5d} "
                 f"{ref:6.3f} {within:4s}")
  which = "evaluation's real-record AUROC (eval)" if eval_aurocs else "AUROC"
  lines += ["", "  (1st pos: median position of the first target event; at 0: share of positives whose",
            "   first event is a target; AUROC: CatBoost on counts of non-target codes, cross-fitted,",
            "   on this draw at true rarity (a cheap proxy); eval: the evaluation's real-record AUROC,",
            "   measured as rltf_jax/evaluation measures it on an enriched draw (calibration_aurocs;",
            "   pos: its validation positives); paper: its Table 6 'Real' AUROC, on its private",
            "   claims data; ok: within 0.05 of it)",
            *([f"{which} within 0.05 of the paper's for {sum(close)} of {len(close)} cohorts"]
              if close else []),
            "", "history (relative risk of the target with the factor coded before it):"]
  lines += [f"  {k:28s} {v:7.2f}" for k, v in p["history"].items()]
  return "\n".join(lines)


# ---------------------------------------------------------------- the evaluation's real-record AUROC
def calibration_pool(cfg, num_patients: int = 400_000, seed: int = 0, members: int = 500,
                     others: int = 3000, draw_size: int = 50_000):
  """The kept patients of `num_patients` population patients (in draws of `draw_size`, each with
  every cohort at its exact count, like the enriched sample of `rltf_jax/data/enrich.py`), after
  the conditions step only: a list of `story` simulations ready for `calibration_records`.

  Each cohort's members are kept at a rate giving about `members` of them (all of a rarer cohort),
  everyone else at a rate giving about `others` patients. The conditions step (phase 1) is most of
  the cost; visits and codes (phase 2) are drawn for the kept patients only, so a calibration of
  the phase-2 knobs (`workup_prob`, `item_scale`) redraws only those.
  """
  from rltf_jax.data.simulate import story  # the story imports nothing of this module
  draws = max(1, -(-int(num_patients) // int(draw_size)))
  total = draws * int(draw_size)
  rates = {name: min(1.0, members / max(cfg.conditions[name].prevalence * total, 1e-12))
           for name in COHORTS}
  other_rate = min(1.0, others / total)
  sims = [story.conditions_subsample(cfg, int(draw_size), (int(seed) << 20) + 7919 * (d + 1),
                                     rates, other_rate, id_offset=(d + 1) * 10**10)
          for d in range(draws)]
  return sims, rates, other_rate


def calibration_aurocs(cfg, pool=None, *, num_patients: int = 400_000, seed: int = 0,
                       members: int = 500, others: int = 3000, iterations: int = 200,
                       depth: int = 6, thread_count: int = 2, truncate_events: int = 20,
                       min_prompt_events: int = 1, model_fraction: float = 0.7, cohorts=None
                       ) -> dict[str, dict[str, float]]:
  """The evaluation's real-record AUROC per cohort, measured as `rltf_jax/evaluation` measures it
  (`evaluate.select_patients` + `utility.build_utility_data` / `evaluate_utility`, row "real"):

  - patients: long enough to be evaluated (at least `truncate_events + min_prompt_events`
    events), at most half of them cohort members (`eval.member_fraction` = 0.5): up to `members`
    members, as many non-members, both uniform samples of their stratum in the population
    (thinned from the pool by inclusion probability, so that no weight is needed);
  - features: per-patient counts of the codes at least two of these records hold, except the
    cohort's targets (`utility.record_features`), on the whole record (prompt + true continuation is the
    patient's record); label: the record holds a target code;
  - CatBoost (`iterations`, `depth`: eval.catboost_*), trained on a stratified `model_fraction`
    split, AUROC on the rest.

  `pool`: a `calibration_pool` (drawn here with `num_patients`, `seed`, `members`, `others` when
  None); its visits and codes are drawn with `cfg`. Returns per cohort: auroc, positives
  (validation members), patients (evaluated).
  """
  from rltf_jax.data.events import concat
  from rltf_jax.data.simulate import story
  from rltf_jax.evaluation import utility  # the evaluation's own features, split and classifier
  if pool is None:
    pool = calibration_pool(cfg, num_patients, seed, members, others)
  sims, rates, other_rate = pool
  parts, condition = [], {name: [] for name in COHORTS}
  for sim in sims:
    parts.append(story.finish_subsample(sim, cfg))
    for name in COHORTS:
      condition[name].append(sim.onset_month[name] < story.NEVER)
  ds = concat(parts)
  has = {name: np.concatenate(v) for name, v in condition.items()}
  inclusion = np.full(ds.num_patients, other_rate)
  for name, rate in rates.items():
    inclusion = np.where(has[name], np.maximum(inclusion, rate), inclusion)
  long_enough = ds.lengths >= truncate_events + min_prompt_events
  rng = np.random.default_rng(seed)
  u = rng.random(ds.num_patients)
  out = {}
  for name in cohorts or COHORTS:
    co = COHORTS[name]
    label = ds.patients_with_any(co.codes)
    # Thin to uniform samples of each stratum: a member stays with rate_c / inclusion, a
    # non-member (kept for itself or for another cohort) with other_rate / inclusion.
    stay = u < np.where(has[name], rates[name], other_rate) / inclusion
    pos = np.flatnonzero(stay & long_enough & label)
    neg = np.flatnonzero(stay & long_enough & ~label & ~has[name])
    r = np.random.default_rng([seed, _name_seed(name)])
    pos = r.permutation(pos)[:members]
    neg = r.permutation(neg)[:max(len(pos), 1)]
    pick = np.sort(np.concatenate([pos, neg]))
    records, y = ds.select(pick), label[pick]
    if min(y.sum(), (~y).sum()) < 4:
      out[name] = dict(auroc=float("nan"), positives=int(y.sum()), patients=int(len(y)))
      continue
    features = utility.record_features(records, co.codes)
    model, valid, _ = utility.model_validation_split(y, model_fraction, seed)
    x = utility.count_matrix(records, features)
    score, _ = utility.fit_and_score(x[model], y[model], x[valid], iterations=iterations,
                                     threads=thread_count, seed=seed, depth=depth)
    out[name] = dict(auroc=float(roc_auc_score(y[valid], score)), positives=int(y[valid].sum()),
                     patients=int(len(y)))
  return out


def _name_seed(name: str) -> int:
  return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**32)
