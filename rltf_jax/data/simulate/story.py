"""Synthetic insurance claims, the project's embedded default data: the generative story.

The generative story, for each patient (all steps vectorised across patients, looping only over
conditions and, inside numpy, over the months of a 2016-2023 calendar):

1. Enrolment. Sex, age at enrolment (by decade, `age_weights`), an enrolment start month and a
   log-normal enrolment length (`enroll_*`). Birth day follows, so ages grow with time.
2. Conditions, in the catalog's order (`catalog.CONDITIONS`), so that a condition's risk
   factors are always drawn before it. Each condition has a hazard per patient and month:
     age curve(age) x male_rr^male x prod(risk[f] if f began in an earlier month)
                    x prod(recent[f] if an episode of f fell in the last `recent_months` months)
                    x a per-patient log-normal random effect (`frailty_sigma`),
   zero outside enrolment (and, with `requires`, zero unless one of those conditions is present).
   Chronic conditions also carry the hazard accumulated from birth to enrolment, so most of them
   are already present when enrolment starts; they stay for life. Acute conditions come as
   episodes; shock follows septicaemia, respiratory failure follows pneumonia, a surgical
   complication follows surgery, AMI follows coronary disease, lipid disorders, diabetes,
   hypertension and smoking, and so on (see configs/simulator.py). An episode triggered in the same
   month as its cause is placed on the cause's day or just after (one hospital stay).
   How many patients get a condition is either its `prevalence` times the number of patients,
   exactly (who and when is then drawn in proportion to the hazard, by an exponential race:
   weighted sampling without replacement; the time by inverting the patient's cumulative hazard),
   or, with `prevalence = 0`, follows an absolute `rate_per_year`. All 16 Table-4 cohorts use the
   exact count, at the paper's frequency, so that rare cohorts occur reliably even in small draws
   (sickle-cell disease is a genotype present from birth in exactly max(1, round(0.036% N))
   patients). After the first episode, acute cohort conditions recur at `recur_per_year`.
3. Visits. Routine visits arrive at a Poisson rate per month that grows with age, a per-patient
   utilisation factor (log-normal: this makes sequence lengths long-tailed) and the chronic
   conditions present (`visit_burden`); their place of service is office, laboratory, outpatient
   hospital, urgent care or home. Enrolment starts with a visit. A chronic condition beginning
   during enrolment is diagnosed at an office visit that day; an acute episode is an emergency-room
   or inpatient (or office, laboratory) visit, usually followed by an office visit weeks later.
4. Codes. A visit opens with a non-target code (the reason for a routine visit, drawn from the
   background distribution; a presenting complaint for an acute episode; a lab panel at a
   laboratory), then background diagnoses (real ICD-10-CM leaf codes with a Zipf-like frequency,
   outside every Table-4 code family), the chronic conditions present (each coded with probability
   `p_code`, always at its diagnosis visit; prevalent ones are first coded at one of the first
   visits), the episode's codes, related codes, procedures (`CCSPX/<n>`) and medications
   (`ATC/<code>`), and everyday procedures and drugs. A code appears at most once per visit.
   A cohort's target codes are only ever emitted by its own condition; related codes of the same
   family (D5700 with sickle-cell disease, I2510 after AMI, J90 with pleurisy) are not targets.
   Records longer than `max_events` are cut at that length. Only a share `workup_prob` of an
   acute cohort's episodes come with their work-up (presenting complaint, related codes,
   procedures, drugs, emergency/inpatient place of service, follow-up visit); the others are coded
   at an office visit with nothing else. `item_scale` multiplies a condition's related-code,
   procedure and drug probabilities. The two set how well the non-target history predicts each
   cohort; they are calibrated to the paper's Table 6 "Real" AUROCs (see configs/simulator.py) and
   act only in this step and the visits step, so the conditions (and exact cohort counts) are
   untouched and a calibration can reuse one conditions draw (`conditions_subsample`).

The draw is a pure function of (config, number of patients, seed). The config is
`configs/simulator.py`'s (`cfg.data.simulator`); every field named above is read from it, none has
a default here. `raise_rare_cohorts` applies the laptop-size prevalence floor to it when the data
is built (`rltf_jax/data/load.py`).
"""

from __future__ import annotations

import copy
import datetime
import math
import sys
import time
from typing import Any

import ml_collections
import numpy as np

from rltf_jax.data.cohorts import COHORTS
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.simulate import catalog
from rltf_jax.errors import ConfigError

_AGES = np.arange(0, 101, 10, dtype=np.float64)  # the points of every age curve
_MAX_AGE = 110
_NEVER = np.int64(10**9)
NEVER = _NEVER  # onset month of a condition a patient never has


# The fields each part of the story reads (configs/simulator.py sets them all).
FIELDS = ("first_year", "num_months", "start_spread_months", "enroll_median_months", "enroll_sigma",
          "enroll_min_months", "age_weights", "male_fraction", "max_events", "visits", "conditions")
VISIT_FIELDS = ("rate_per_month", "age_curve", "frailty_sigma", "frailty_cap", "pos_codes",
                "pos_weights", "background_per_visit", "background_zipf", "background_tail",
                "catalog_seed", "background_med_prob", "followup_prob", "followup_days",
                "first_coding_geometric", "item_per_visit", "followup_per_visit",
                "sporadic_per_visit")
CONDITION_FIELDS = ("prevalence", "rate_per_year", "age_curve", "male_rr", "risk", "recent",
                    "recent_months", "requires", "p_code", "recur_per_year", "frailty_sigma",
                    "visit_burden", "prevalent_only", "workup_prob", "item_scale")


def _require(section, fields, where: str) -> None:
  missing = [f for f in fields if f not in section]
  if missing:
    raise ConfigError(f"{where} lacks {', '.join(missing)} (the simulator's parameters are "
                      "configs/simulator.py's get_config())")


def validate_config(cfg) -> None:
  """Raises `ConfigError` naming the field when the simulator config cannot be used."""
  _require(cfg, FIELDS, "data.simulator")
  _require(cfg.visits, VISIT_FIELDS, "data.simulator.visits")
  names = list(catalog.CONDITIONS)
  _require(cfg.conditions, names, "data.simulator.conditions")
  for i, name in enumerate(names):
    cc = cfg.conditions[name]
    where = f"data.simulator.conditions.{name}"
    _require(cc, CONDITION_FIELDS, where)
    if len(cc.age_curve) != len(_AGES) or min(cc.age_curve) < 0:
      raise ConfigError(f"{where}.age_curve needs {len(_AGES)} non-negative values (ages 0..100)")
    if not 0 <= cc.workup_prob <= 1 or cc.item_scale < 0:
      raise ConfigError(f"{where}: workup_prob must be in [0, 1] and item_scale >= 0")
    if not 0 <= cc.prevalence <= 1 or cc.rate_per_year < 0:
      raise ConfigError(f"{where}: prevalence must be in [0, 1] and rate_per_year >= 0")
    if name in COHORTS and cc.prevalence <= 0:
      raise ConfigError(f"{where}.prevalence must be > 0: Table-4 cohorts are drawn by exact count")
    for f in list(cc.risk) + list(cc.recent) + list(cc.requires):
      if f not in names[:i]:
        raise ConfigError(f"{where}: risk factor {f!r} must be a condition listed before "
                          f"{name!r} in catalog.CONDITIONS")
    for f in cc.recent:
      if f in catalog.CHRONIC:
        raise ConfigError(f"{where}.recent.{f}: only acute conditions have recent episodes; use risk")
  if cfg.num_months < 12 or cfg.enroll_min_months < 1:
    raise ConfigError("data.simulator: num_months must be >= 12 and enroll_min_months >= 1")
  if cfg.max_events < 10:
    raise ConfigError("data.simulator.max_events must be >= 10")


def raise_rare_cohorts(cfg, min_percent: float) -> ml_collections.ConfigDict:
  """A copy of the simulator config with every Table-4 cohort's prevalence raised to at least
  `min_percent` percent of patients (`data.min_cohort_percent`; 0 keeps the config's own).

  Applied when the data is drawn, after command-line and sweep overrides, so that the run's config
  records the floor it asked for and the draw honours it.
  """
  if not 0 <= min_percent <= 100:
    raise ConfigError(f"data.min_cohort_percent must be a percentage in [0, 100], "
                      f"got {min_percent}")
  out = copy.deepcopy(cfg)
  for name in COHORTS:
    condition = out.conditions[name]
    condition.prevalence = max(condition.prevalence, min_percent / 100)
  return out


class _Codes:
  """The draw's code table: strings to ids, built once per draw."""

  def __init__(self):
    self.ids: dict[str, int] = {}

  def id(self, code: str) -> int:
    code = catalog.canonical(code)
    if code not in self.ids:
      self.ids[code] = len(self.ids)
    return self.ids[code]

  def table(self, weights) -> tuple[np.ndarray, np.ndarray]:
    """(ids, cumulative normalised weights) of a catalog weight list."""
    ids = np.array([self.id(c) for c, _ in weights], np.int64)
    w = np.array([x for _, x in weights], np.float64)
    return ids, np.cumsum(w / w.sum())


def _draw(rng, table, n: int) -> np.ndarray:
  ids, cum = table
  return ids[np.minimum(np.searchsorted(cum, rng.random(n), side="right"), len(ids) - 1)]


# ====================================================================== simulation
class _Calendar:
  def __init__(self, first_year: int, num_months: int):
    epoch = datetime.date(1970, 1, 1)
    days = []
    for m in range(num_months + 1):
      y, mo = first_year + m // 12, m % 12 + 1
      days.append((datetime.date(y, mo, 1) - epoch).days)
    self.month_day = np.array(days, np.int64)   # [M + 1] first day of each month
    self.length = np.diff(self.month_day)         # [M]


def simulate(cfg, num_patients: int, seed: int, verbose: bool = False) -> PatientEvents:
  """Draws `num_patients` synthetic claims records; a pure function of (cfg, num_patients, seed)."""
  if int(num_patients) != num_patients or num_patients <= 0:
    raise ConfigError(f"num_patients must be a positive integer, got {num_patients!r}")
  validate_config(cfg)
  t0 = time.time()
  log = (lambda msg: print(f"  [{time.time() - t0:5.1f}s] {msg}", file=sys.stderr, flush=True)) \
      if verbose else (lambda msg: None)
  sim = _Simulation(cfg, int(num_patients), int(seed))
  sim.enrol()
  log(f"enrolled {num_patients} patients")
  sim.conditions()
  log("conditions drawn")
  return _finish(sim, log)


def simulate_subsample(cfg, num_patients: int, seed: int, rates: dict[str, float], other_rate: float,
                       id_offset: int = 0) -> tuple[PatientEvents, np.ndarray]:
  """A stratified (Poisson) subsample of the draw `simulate(cfg, num_patients, seed)` would be:
  each patient is kept with probability max(`other_rate`, rates[c] for every condition c of
  `rates` the patient has), independently. Returns the kept patients' records (subject ids
  `id_offset` + their 1-based index in the draw) and each one's inclusion probability.

  Exact, and about twice as fast as the whole draw: who has which condition is drawn for all
  patients (the exact-count races couple them), then visits and codes only for the kept ones,
  which is the same distribution because those two steps treat patients independently given
  their enrolment and conditions.
  """
  sim = conditions_subsample(cfg, num_patients, seed, rates, other_rate, id_offset)
  return _finish(sim, lambda msg: None), sim.inclusion


def conditions_subsample(cfg, num_patients: int, seed: int, rates: dict[str, float],
                         other_rate: float, id_offset: int = 0) -> "_Simulation":
  """`simulate_subsample`'s first phase: the draw restricted to its kept patients after the
  conditions step (enrolment and conditions drawn for all). `finish_subsample` draws their visits
  and codes; with the same config the two give `simulate_subsample`'s records exactly. A
  calibration of the visit and code knobs (`workup_prob`, `item_scale`, the `visits` section)
  reuses this phase for every config it tries
  (`diagnostics.calibration_aurocs`)."""
  validate_config(cfg)
  sim = _Simulation(cfg, int(num_patients), int(seed))
  sim.enrol()
  sim.conditions()
  inclusion = np.full(sim.P, float(other_rate))
  for name, rate in rates.items():
    inclusion = np.where(sim.onset_month[name] < _NEVER, np.maximum(inclusion, rate), inclusion)
  kept = np.flatnonzero(sim.rng("subsample").random(sim.P) < inclusion)
  sim.keep(kept, id_offset)
  sim.inclusion = inclusion[kept]
  return sim


def finish_subsample(sim: "_Simulation", cfg=None) -> PatientEvents:
  """The visits and codes of a `conditions_subsample` (with `cfg`'s visit and code knobs when
  given: the conditions stay those already drawn). Leaves `sim` reusable."""
  if cfg is not None:
    validate_config(cfg)
    sim.cfg = cfg
  sim.codes = _Codes()
  return _finish(sim, lambda msg: None)


def _finish(sim: "_Simulation", log) -> PatientEvents:
  sim.visits()
  log(f"{len(sim.v_patient)} visits")
  ds = sim.events()
  log(f"{ds.num_events} events")
  return ds


class _Simulation:
  """The state of one draw; each method is one step of the generative story."""

  def __init__(self, cfg, num_patients: int, seed: int):
    self.cfg, self.P, self.seed = cfg, num_patients, seed
    self.M = int(cfg.num_months)
    self.cal = _Calendar(int(cfg.first_year), self.M)
    self.codes = _Codes()
    self.onset_month: dict[str, np.ndarray] = {}  # first month present (-1: before enrolment)
    self.onset_day: dict[str, np.ndarray] = {}
    self.episodes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # patient, month, day
    # (factor, months) -> (patients with an episode of factor, their `_recent` rows)
    self._recent_cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    self.ids = np.arange(1, num_patients + 1, dtype=np.int64)  # subject ids

  def keep(self, idx: np.ndarray, id_offset: int) -> None:
    """Restricts the draw to patients `idx` after the conditions are drawn (`simulate_subsample`)."""
    for name in ("sex", "start", "end", "birth_day", "active", "age_pm", "age_start", "age_index"):
      setattr(self, name, getattr(self, name)[idx])
    for table in (self.onset_month, self.onset_day):
      for name in table:
        table[name] = table[name][idx]
    new_index = np.full(self.P, -1, np.int64)
    new_index[idx] = np.arange(len(idx))
    for name, (pat, mon, day) in self.episodes.items():
      ok = new_index[pat] >= 0
      self.episodes[name] = (new_index[pat[ok]], mon[ok], day[ok])
    self._recent_cache.clear()
    self.ids = id_offset + np.asarray(idx, np.int64) + 1
    self.P = len(idx)

  def rng(self, *stage) -> np.random.Generator:
    """An independent stream per step, so editing one step does not reshuffle the others."""
    return np.random.default_rng([self.seed, *[_stable_hash(s) for s in stage]])

  # ---------------------------------------------------------------- 1. enrolment
  def enrol(self):
    cfg, P, M = self.cfg, self.P, self.M
    rng = self.rng("enrol")
    self.sex = (rng.random(P) < cfg.male_fraction).astype(np.int8)
    w = np.asarray(cfg.age_weights, np.float64)
    age0 = (rng.choice(len(w), size=P, p=w / w.sum()) + rng.random(P)) * 10.0
    spread = min(int(cfg.start_spread_months), M - int(cfg.enroll_min_months))
    self.start = rng.integers(0, max(spread, 1), P)
    length = np.round(np.exp(rng.normal(math.log(cfg.enroll_median_months), cfg.enroll_sigma, P)))
    self.end = self.start + np.clip(length, cfg.enroll_min_months, M - self.start).astype(np.int64)
    self.birth_day = (self.cal.month_day[self.start] - rng.integers(0, 28, P)
                      - np.round(age0 * 365.25)).astype(np.int64)
    months = np.arange(M)
    self.active = (months >= self.start[:, None]) & (months < self.end[:, None])   # [P, M]
    mid = self.cal.month_day[:-1] + 15
    self.age_pm = np.clip((mid[None, :] - self.birth_day[:, None]) // 365.25, 0, _MAX_AGE).astype(np.int16)
    self.age_start = (self.cal.month_day[self.start] - self.birth_day) / 365.25
    # The age index of enrolled months, and _MAX_AGE + 1 (a zero row of `_hazard`'s table) outside.
    self.age_index = np.where(self.active, self.age_pm, np.int16(_MAX_AGE + 1))

  # ---------------------------------------------------------------- 2. conditions
  def _recent(self, factor: str, months: int) -> tuple[np.ndarray, np.ndarray]:
    """(patients with an episode of `factor`, bool [their number, M]: an episode in this month or
    the `months - 1` before); every other patient's row would be all False. Cached."""
    key = (factor, months)
    if key not in self._recent_cache:
      pat, mon, _ = self.episodes[factor]
      rows, local = np.unique(pat, return_inverse=True)
      ind = np.zeros((len(rows), self.M + 1), np.int16)
      ind[local, mon + 1] = 1
      cs = np.cumsum(ind, axis=1, dtype=np.int16)   # cs[:, m + 1]: months with episodes up to m
      lo = np.maximum(np.arange(self.M) + 1 - months, 0)
      self._recent_cache[key] = rows, (cs[:, 1:] - cs[:, lo]) > 0
    return self._recent_cache[key]

  @staticmethod
  def _multiply_rows(w: np.ndarray, rows: np.ndarray, factor: np.float32, where: np.ndarray) -> None:
    """w[rows] *= factor where `where` (bool [len(rows), M]) holds, in place. Equal to a masked
    multiply over all of `w` whose other rows are all False, at the cost of the rows touched."""
    if 3 * len(rows) > len(w):   # a gather and a scatter of most rows cost more than one pass
      mask = np.zeros(w.shape, bool)
      mask[rows] = where
      np.multiply(w, factor, out=w, where=mask)
    elif len(rows):
      sub = w[rows]
      np.multiply(sub, factor, out=sub, where=where)
      w[rows] = sub

  def _hazard(self, name: str, cc, rng) -> tuple[np.ndarray, np.ndarray]:
    """(window hazard [P, M] per month, hazard accumulated before enrolment [P]). Each factor
    touches only the rows of the patients who have it: most risk factors are rare."""
    ages_year = np.arange(_MAX_AGE + 1) + 0.5
    per_year = np.interp(ages_year, _AGES, cc.age_curve)
    cum = np.concatenate([[0.0], np.cumsum(per_year)])
    pre = np.interp(self.age_start, np.arange(_MAX_AGE + 2), cum)
    if cc.prevalent_only:   # no onset during enrolment (the factors below leave zeros zero)
      w = np.zeros((self.P, self.M), np.float32)
      pre = np.ones(self.P)
    else:   # one gather; months outside enrolment read the table's final zero
      w = np.append((per_year / 12.0).astype(np.float32), np.float32(0.0))[self.age_index]
    months = np.arange(self.M)
    scale = np.where(self.sex == 1, cc.male_rr, 1.0)
    for f, rr in cc.risk.items():
      onset = self.onset_month[f]
      rows = np.flatnonzero(onset < self.M - 1)   # the factor began before the last month
      self._multiply_rows(w, rows, np.float32(rr), onset[rows, None] < months)
      scale_pre = np.where(onset < self.start, rr, 1.0)
      pre = pre * scale_pre
    for f, rr in cc.recent.items():
      rows, recent = self._recent(f, cc.recent_months)
      self._multiply_rows(w, rows, np.float32(rr), recent)
    if cc.requires:
      # Present in month m when one of them began before m (onset -1: before enrolment).
      first = np.min([self.onset_month[f] for f in cc.requires], axis=0)
      w *= first[:, None] < months
      ok_pre = np.zeros(self.P, bool)
      for f in cc.requires:
        ok_pre |= self.onset_month[f] < self.start
      pre = pre * ok_pre
    if cc.frailty_sigma > 0:
      s = cc.frailty_sigma
      scale = scale * np.exp(rng.normal(0.0, s, self.P) - s * s / 2)
    w *= scale.astype(np.float32)[:, None]
    pre = pre * scale
    return w, pre

  def conditions(self):
    for name in catalog.CONDITIONS:
      cc = self.cfg.conditions[name]
      rng = self.rng("condition", name)
      w, pre = self._hazard(name, cc, rng)
      chronic = name in catalog.CHRONIC
      if not chronic:
        pre = np.zeros(self.P)
      if cc.prevalence > 0:
        month = self._race(w, pre, cc.prevalence, rng)
      else:
        month = self._rate(w, pre, cc.rate_per_year, rng, chronic)
      if chronic:
        self.onset_month[name] = month
        day = np.full(self.P, _NEVER)
        inc = (month >= 0) & (month < _NEVER)
        day[month < 0] = -_NEVER
        day[inc] = self.cal.month_day[month[inc]] + rng.integers(0, 28, inc.sum())
        self.onset_day[name] = day
      else:
        self._add_episodes(name, cc, month, rng)

  def _race(self, w, pre, prevalence, rng) -> np.ndarray:
    """Exactly round(prevalence * P) patients (at least one), chosen with probability growing with
    their total hazard (exponential race); the month inverts each one's cumulative hazard.
    Returns the onset month [P]: -1 before enrolment, _NEVER for patients not chosen."""
    total = pre + w.sum(axis=1, dtype=np.float64)
    eligible = total > 0
    k = min(max(1, int(round(prevalence * self.P))), int(eligible.sum()))
    key = np.full(self.P, np.inf)
    key[eligible] = rng.exponential(size=self.P)[eligible] / total[eligible]
    chosen = np.argpartition(key, k - 1)[:k] if k < self.P else np.arange(self.P)
    month = np.full(self.P, _NEVER)
    u = rng.random(self.P)[chosen] * total[chosen]
    before = u < pre[chosen]
    cum = np.cumsum(w[chosen], axis=1, dtype=np.float64)
    m = (cum < (u - pre[chosen])[:, None]).sum(axis=1)
    m = np.minimum(m, self.end[chosen] - 1)   # rounding at the very end of the cumulative hazard
    month[chosen] = np.where(before, -1, m)
    return month

  def _rate(self, w, pre, rate, rng, chronic) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Absolute hazard. Chronic: the onset month [P]; acute: (patients, months) of all episodes."""
    hit = rng.random((self.P, self.M), dtype=np.float32) < -np.expm1(-rate * w)
    if not chronic:
      return np.nonzero(hit)
    month = np.where(hit.any(axis=1), hit.argmax(axis=1), _NEVER)
    month[rng.random(self.P) < -np.expm1(-rate * pre)] = -1
    return month

  def _add_episodes(self, name, cc, month, rng):
    if isinstance(month, tuple):
      pat, mon = month
      pat, mon = pat.astype(np.int64), mon.astype(np.int64)
    else:  # first episodes from the race, then recurrences
      first_pat = np.flatnonzero(month < _NEVER)
      first_mon = month[first_pat]
      left = self.end[first_pat] - first_mon - 1
      n = rng.poisson(cc.recur_per_year * left / 12.0)
      n[left <= 0] = 0
      rp = np.repeat(first_pat, n)
      rm = np.repeat(first_mon, n) + 1 + np.floor(rng.random(len(rp)) * np.repeat(left, n)).astype(np.int64)
      pat, mon = np.concatenate([first_pat, rp]), np.concatenate([first_mon, rm])
    order = np.lexsort((mon, pat))
    pat, mon = pat[order], mon[order]
    day = self.cal.month_day[mon] + np.floor(rng.random(len(pat)) * self.cal.length[mon]).astype(np.int64)
    # An episode triggered by a cause in the same month follows it: same stay, same or next days.
    for f in cc.recent:
      fp, fm, fd = self.episodes[f]
      if len(fp) == 0:  # no episode of the cause (a small draw): nothing to follow
        continue
      key_f = fp * self.M + fm
      key = pat * self.M + mon
      at = np.searchsorted(key_f, key, side="right") - 1   # the cause's last episode that month
      same = (at >= 0) & (key_f[np.maximum(at, 0)] == key)
      if same.any():
        cause_day = fd[at[same]]
        day[same] = np.maximum(day[same], cause_day + rng.integers(0, 3, same.sum()))
    order = np.lexsort((day, pat))
    self.episodes[name] = (pat[order], mon[order], day[order])
    first = np.full(self.P, _NEVER)
    first_day = np.full(self.P, _NEVER)
    if len(pat):
      p_sorted = pat[order]
      uniq, at = np.unique(p_sorted, return_index=True)
      first[uniq] = mon[order][at]
      first_day[uniq] = day[order][at]
    self.onset_month[name] = first
    self.onset_day[name] = first_day

  # ---------------------------------------------------------------- 3. visits
  def visits(self):
    vc, P, M = self.cfg.visits, self.P, self.M
    rng = self.rng("visits")
    curve = np.interp(np.arange(_MAX_AGE + 1) + 0.5, _AGES, vc.age_curve).astype(np.float32)
    s = vc.frailty_sigma
    self.utilisation = np.minimum(np.exp(rng.normal(0.0, s, P) - s * s / 2), vc.frailty_cap)
    mult = np.ones((P, M), np.float32)
    for name in catalog.CHRONIC:
      burden = self.cfg.conditions[name].visit_burden
      if burden:
        has = self.onset_month[name][:, None] <= np.arange(M)[None, :]
        np.add(mult, np.float32(burden), out=mult, where=has)
    rate = curve[self.age_pm] * mult
    rate *= self.active
    rate *= (vc.rate_per_month * self.utilisation).astype(np.float32)[:, None]
    n = rng.poisson(rate)
    n[np.arange(P), self.start] += 1          # enrolment starts with a visit
    pat, mon = np.nonzero(n)
    cnt = n[pat, mon]
    pat, mon = np.repeat(pat, cnt), np.repeat(mon, cnt)
    day = self.cal.month_day[mon] + np.floor(rng.random(len(pat)) * self.cal.length[mon]).astype(np.int64)
    first = np.zeros(len(pat), bool)           # the enrolment visit opens the record
    is_start = mon == self.start[pat]
    first_idx = np.flatnonzero(is_start)
    uniq, at = np.unique(pat[first_idx], return_index=True)
    day[first_idx[at]] = self.cal.month_day[self.start[uniq]]
    first[first_idx[at]] = True
    pw = np.asarray(vc.pos_weights, np.float64)
    pos = np.asarray(vc.pos_codes, np.int64)[rng.choice(len(pw), len(pat), p=pw / pw.sum())]
    pos[first] = 11
    parts = [dict(patient=pat, day=day, pos=pos, kind=np.zeros(len(pat), np.int8),
                  cond=np.full(len(pat), -1), work=np.zeros(len(pat), bool))]
    names = list(catalog.CONDITIONS)
    # Diagnosis visits of chronic conditions that begin during enrolment.
    for ci, name in enumerate(names):
      if name in catalog.CHRONIC:
        d = self.onset_day[name]
        p = np.flatnonzero((d > -_NEVER) & (d < _NEVER))
        parts.append(dict(patient=p, day=d[p], pos=np.full(len(p), 11), kind=np.full(len(p), 1, np.int8),
                          cond=np.full(len(p), ci), work=np.zeros(len(p), bool)))
    # Episode visits and their follow-up office visits.
    for ci, name in enumerate(names):
      if name in catalog.CHRONIC:
        continue
      p, _, d = self.episodes[name]
      r = self.rng("episode", name)
      pos_codes = np.array([c for c, _ in catalog.CONDITIONS[name].pos])
      pos_w = np.array([x for _, x in catalog.CONDITIONS[name].pos])
      pos = pos_codes[r.choice(len(pos_w), len(p), p=pos_w / pos_w.sum())]
      # Without a work-up the diagnosis is only coded at an office visit.
      work = r.random(len(p)) < self.cfg.conditions[name].workup_prob
      pos[~work] = 11
      parts.append(dict(patient=p, day=d, pos=pos, kind=np.full(len(p), 2, np.int8),
                        cond=np.full(len(p), ci), work=work))
      fu = (r.random(len(p)) < vc.followup_prob) & work
      lo, hi = vc.followup_days
      fd = d[fu] + r.integers(lo, hi + 1, fu.sum())
      keep = fd < self.cal.month_day[self.end[p[fu]]]
      parts.append(dict(patient=p[fu][keep], day=fd[keep], pos=np.full(keep.sum(), 11),
                        kind=np.full(keep.sum(), 3, np.int8), cond=np.full(keep.sum(), ci),
                        work=np.zeros(keep.sum(), bool)))
    cat = {k: np.concatenate([x[k] for x in parts]) for k in parts[0]}
    # Order: patient, day, then the enrolment visit first and episodes before their follow-ups.
    tie = rng.random(len(cat["patient"]))
    order = np.lexsort((tie, cat["kind"] == 3, ~np.concatenate([first, np.zeros(len(tie) - len(first), bool)]),
                        cat["day"], cat["patient"]))
    self.v_patient = cat["patient"][order].astype(np.int64)
    self.v_day = cat["day"][order].astype(np.int64)
    self.v_pos = cat["pos"][order].astype(np.int16)
    self.v_kind = cat["kind"][order]
    self.v_cond = cat["cond"][order]
    self.v_work = cat["work"][order]
    counts = np.bincount(self.v_patient, minlength=P)
    self.v_offsets = np.concatenate([[0], np.cumsum(counts)])
    self.v_index = np.arange(len(self.v_patient)) - self.v_offsets[self.v_patient]

  # ---------------------------------------------------------------- 4. codes
  def events(self) -> PatientEvents:
    cfg, vc = self.cfg, self.cfg.visits
    names = list(catalog.CONDITIONS)
    nv = len(self.v_patient)
    vp, vd, kind, vcond = self.v_patient, self.v_day, self.v_kind, self.v_cond
    routine = (kind == 0) | (kind == 3)
    lab = routine & (self.v_pos == 81)
    out_v, out_c, out_r = [], [], []

    def emit(visits, code_ids, rank):
      out_v.append(np.asarray(visits, np.int64))
      out_c.append(np.broadcast_to(np.asarray(code_ids, np.int64), np.shape(visits)))
      out_r.append(np.full(len(visits), rank, np.int8))

    def emit_each(rng, visits, weights, rank, scale=1.0):
      for code, prob in weights:
        hit = visits[rng.random(len(visits)) < prob * scale]
        emit(hit, self.codes.id(code), rank)

    background = catalog.background_codes(vc.background_tail, vc.catalog_seed)
    zipf = float(vc.background_zipf)   # read once: a ConfigDict lookup per code costs ~0.2 s a draw
    bg = self.codes.table([(c, 1.0 / (r + 1) ** zipf) for r, c in enumerate(background)])
    rng = self.rng("codes", "background")
    # Reason for the visit (always first, never a target code).
    reason = np.flatnonzero((kind != 2) & ~lab)
    emit(reason, _draw(rng, bg, len(reason)), 0)
    emit(np.flatnonzero(lab), self.codes.id(catalog.LAB_REASON), 0)
    # Further background diagnoses.
    nb = rng.poisson(np.where(routine & ~lab, vc.background_per_visit, vc.background_per_visit / 3))
    extra = np.repeat(np.arange(nv), nb)
    emit(extra, _draw(rng, bg, len(extra)), 1)
    # Chronic conditions present at the visit.
    for ci, name in enumerate(names):
      if name not in catalog.CHRONIC:
        continue
      cc, book = self.cfg.conditions[name], catalog.CONDITIONS[name]
      r = self.rng("codes", name)
      onset = self.onset_day[name][vp]
      present = np.flatnonzero(onset <= vd)
      coded = r.random(len(present)) < cc.p_code
      forced = np.zeros(nv, bool)
      forced[(kind == 1) & (vcond == ci)] = True
      prevalent = np.flatnonzero(self.onset_month[name] < 0)
      j = np.minimum(r.geometric(vc.first_coding_geometric, len(prevalent)) - 1,
                     np.diff(self.v_offsets)[prevalent] - 1)
      forced[self.v_offsets[prevalent] + j] = True
      vis = np.union1d(present[coded], np.flatnonzero(forced))
      emit(vis, _draw(r, self.codes.table(book.codes), len(vis)), 2)
      # Related codes, procedures and drugs belong to some patients (probability per patient)
      # and are recorded at some of their coded visits.
      for items, rank in ((book.related, 4), (book.procedures, 5), (book.meds, 6)):
        for code, prob in items:
          has = r.random(self.P) < prob * cc.item_scale
          at = vis[has[vp[vis]] & (r.random(len(vis)) < vc.item_per_visit)]
          emit(at, self.codes.id(code), rank)
    # Acute episodes, and their follow-up codes at later routine visits.
    for ci, name in enumerate(names):
      if name in catalog.CHRONIC:
        continue
      book, scale = catalog.CONDITIONS[name], self.cfg.conditions[name].item_scale
      r = self.rng("codes", name)
      ep = np.flatnonzero((kind == 2) & (vcond == ci))
      work = self.v_work[ep]
      emit(ep[work], _draw(r, self.codes.table(book.presenting or book.codes), work.sum()), 0)
      emit(ep[~work], _draw(r, bg, (~work).sum()), 0)
      emit(ep, _draw(r, self.codes.table(book.codes), len(ep)), 3)
      emit_each(r, ep[work], book.related, 4, scale)
      emit_each(r, ep[work], book.procedures, 5, scale)
      emit_each(r, ep[work], book.meds, 6, scale)
      if book.followup:
        worked_up = np.zeros(self.P, bool)
        worked_up[vp[ep[work]]] = True
        after = np.flatnonzero(routine & (self.onset_day[name][vp] < vd))
        for code, prob in book.followup:
          has = worked_up & (r.random(self.P) < prob * scale)
          emit(after[has[vp[after]] & (r.random(len(after)) < vc.followup_per_visit)],
               self.codes.id(code), 4)
    # Everyday procedures and drugs at routine visits, and related codes for other indications
    # (so that no related code marks a cohort by itself).
    rng = self.rng("codes", "routine")
    rv = np.flatnonzero(routine & ~lab)
    pool = self.codes.table([(c, 1.0) for c in catalog.sporadic_pool()])
    ns = rng.poisson(vc.sporadic_per_visit, len(rv))
    sv = np.repeat(rv, ns)
    emit(sv, _draw(rng, pool, len(sv)), 1)
    emit_each(rng, rv, catalog.ROUTINE_PROCEDURES, 5)
    meds = self.codes.table([(c, 1.0 / (r + 1)) for r, c in enumerate(catalog.BACKGROUND_MEDS)])
    mv = rv[rng.random(len(rv)) < vc.background_med_prob]
    emit(mv, _draw(rng, meds, len(mv)), 6)

    # Assemble: order by visit, rank, then at random; one event per (visit, code).
    ev_v, ev_c, ev_r = np.concatenate(out_v), np.concatenate(out_c), np.concatenate(out_r)
    tie = rng.random(len(ev_v))
    order = np.lexsort((tie, ev_r, ev_v))
    ev_v, ev_c = ev_v[order], ev_c[order]
    _, first = np.unique(ev_v * len(self.codes.ids) + ev_c, return_index=True)
    keep = np.sort(first)
    ev_v, ev_c = ev_v[keep], ev_c[keep]
    # Cap each record at max_events (a patient's events are contiguous and in time order).
    ev_p = vp[ev_v]
    counts = np.bincount(ev_p, minlength=self.P)
    starts = np.concatenate([[0], np.cumsum(counts)])
    keep = (np.arange(len(ev_p)) - starts[ev_p]) < cfg.max_events
    ev_v, ev_c, ev_p = ev_v[keep], ev_c[keep], ev_p[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(ev_p, minlength=self.P))])
    # Code table: the codes used, sorted, so the table does not depend on emission order.
    table = np.array(list(self.codes.ids), dtype=str)
    used = np.flatnonzero(np.bincount(ev_c, minlength=len(table)))
    order = used[np.argsort(table[used])]
    remap = np.full(len(table), -1, np.int64)
    remap[order] = np.arange(len(order))
    return PatientEvents.build(
        subject_id=self.ids, sex=self.sex, birth_day=self.birth_day,
        offsets=offsets, code=remap[ev_c], day=self.v_day[ev_v], visit=self.v_index[ev_v],
        pos=self.v_pos[ev_v], codes=table[order], source="simulator")


def _stable_hash(x: Any) -> int:
  """A seed word for a stage name that does not change between Python runs."""
  if isinstance(x, (int, np.integer)):
    return int(x)
  h = 2166136261
  for b in str(x).encode():
    h = ((h ^ b) * 16777619) & 0xFFFFFFFF
  return h
