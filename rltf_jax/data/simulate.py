"""Synthetic insurance claims: the project's embedded default data.

The generative story, for each patient (all steps vectorised across patients, looping only over
conditions and, inside numpy, over the months of a 2016-2023 calendar):

1. Enrolment. Sex, age at enrolment (by decade, `age_weights`), an enrolment start month and a
   log-normal enrolment length (`enroll_*`). Birth day follows, so ages grow with time.
2. Conditions, in the catalog's order (`simulator_catalog.CONDITIONS`), so that a condition's risk
   factors are always drawn before it. Each condition has a hazard per patient and month:
     age curve(age) x male_rr^male x prod(risk[f] if f began in an earlier month)
                    x prod(recent[f] if an episode of f fell in the last `recent_months` months)
                    x a per-patient log-normal random effect (`frailty_sigma`),
   zero outside enrolment (and, with `requires`, zero unless one of those conditions is present).
   Chronic conditions also carry the hazard accumulated from birth to enrolment, so most of them
   are already present when enrolment starts; they stay for life. Acute conditions come as
   episodes; shock follows septicaemia, respiratory failure follows pneumonia, a surgical
   complication follows surgery, AMI follows coronary disease, lipid disorders, diabetes,
   hypertension and smoking, and so on (see `default_config`). An episode triggered in the same
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
   Records longer than `max_events` are cut at that length.

The draw is a pure function of (config, number of patients, seed).

Command line:
  python -m rltf_jax.data.simulate --patients 20000 --seed 0 --report
  python -m rltf_jax.data.simulate --patients 20000 --seed 0 --out data/sim20k   # a MEDS dataset
"""

from __future__ import annotations

import argparse
import datetime
import functools
import math
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from rltf_jax import io as rltf_io
from rltf_jax.data import simulator_catalog as catalog
from rltf_jax.data.cohorts import COHORTS
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError, cli_main

_AGES = np.arange(0, 101, 10, dtype=np.float64)  # the points of every age curve
_MAX_AGE = 110
_NEVER = np.int64(10**9)


# ====================================================================== config
def _gompertz(slope: float, start: int = 0, center: int = 50) -> tuple[float, ...]:
  """Age curve exp(slope * (age - center)) at ages 0, 10, ..., 100, zero below `start`."""
  return tuple(0.0 if a < start else round(math.exp(slope * (a - center)), 4) for a in _AGES)


def _cond(prevalence=0.0, rate_per_year=0.0, age_curve=None, male_rr=1.0, risk=None, recent=None,
          recent_months=1, requires=(), p_code=0.5, recur_per_year=0.0, frailty_sigma=0.5,
          visit_burden=0.0, prevalent_only=False, workup_prob=1.0) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.prevalence = float(prevalence)        # > 0: exactly round(prevalence * N) patients (at least 1)
  c.rate_per_year = float(rate_per_year)  # used when prevalence == 0: absolute hazard per year
  c.age_curve = tuple(age_curve or (1.0,) * 11)  # relative hazard at ages 0, 10, ..., 100
  c.male_rr = float(male_rr)
  c.risk = ml_collections.ConfigDict(risk or {})      # factor -> hazard ratio once it has begun
  c.recent = ml_collections.ConfigDict(recent or {})  # acute factor -> hazard ratio shortly after
  c.recent_months = int(recent_months)    # "recent": this month and the previous ones
  c.requires = tuple(requires)            # zero hazard unless one of these is present
  c.p_code = float(p_code)                # chronic: chance a visit codes it
  c.recur_per_year = float(recur_per_year)  # acute cohorts: further episodes after the first
  c.frailty_sigma = float(frailty_sigma)  # per-patient log-normal random effect on the hazard
  c.visit_burden = float(visit_burden)    # chronic: added to the routine visit rate multiplier
  c.prevalent_only = bool(prevalent_only)  # chronic: present from birth (a genotype)
  c.workup_prob = float(workup_prob)      # acute: chance an episode comes with its work-up
  return c


def default_config() -> ml_collections.ConfigDict:
  """All numeric knobs of the simulator (the code tables are in `simulator_catalog`)."""
  cfg = ml_collections.ConfigDict()
  cfg.first_year = 2016                  # calendar: num_months months from January of this year
  cfg.num_months = 96
  cfg.start_spread_months = 60           # enrolment starts uniformly in the first months
  cfg.enroll_median_months = 36
  cfg.enroll_sigma = 0.8
  cfg.enroll_min_months = 6
  cfg.age_weights = (0.11, 0.10, 0.12, 0.13, 0.13, 0.14, 0.13, 0.09, 0.05)  # age 0-9, ..., 80-89
  cfg.male_fraction = 0.48
  cfg.max_events = 1000

  v = cfg.visits = ml_collections.ConfigDict()
  v.rate_per_month = 0.22                # routine visits of a typical 40-year-old
  v.age_curve = (1.6, 0.8, 0.8, 0.9, 1.0, 1.2, 1.5, 1.8, 2.1, 2.3, 2.3)
  v.frailty_sigma = 0.75                 # per-patient utilisation, log-normal
  v.frailty_cap = 8.0
  v.pos_codes = (11, 81, 22, 20, 12)
  v.pos_weights = (0.72, 0.12, 0.09, 0.05, 0.02)
  v.background_per_visit = 1.0           # extra background diagnoses per routine visit (Poisson)
  v.background_zipf = 1.05               # frequency of the r-th background code ~ 1 / r^this
  v.background_tail = 20000              # ICD-10-CM leaf codes in the background tail
  v.catalog_seed = 20240215              # which codes form the tail and their ranks (not per draw)
  v.background_med_prob = 0.25
  v.followup_prob = 0.6                  # an office visit after an acute episode
  v.followup_days = (7, 42)
  v.first_coding_geometric = 0.4         # prevalent chronic: first coded at visit j ~ Geometric
  v.item_per_visit = 0.5                 # a patient's related code/drug/procedure at a coded visit
  v.followup_per_visit = 0.3             # a follow-up code at a routine visit after an episode
  v.sporadic_per_visit = 0.12            # related codes for other indications (Poisson per visit)

  c = cfg.conditions = ml_collections.ConfigDict()
  rising, steep, adult = _gompertz(0.05), _gompertz(0.075), _gompertz(0.04, start=20)
  u_shape = (3.0, 0.6, 0.4, 0.45, 0.6, 0.9, 1.5, 2.6, 4.5, 7.0, 9.0)
  child = (2.0, 1.6, 1.0, 0.8, 0.7, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6)
  freq = {name: co.paper_frequency_percent / 100 for name, co in COHORTS.items()}
  # ------------------------------------------------------------ chronic risk factors
  c.obesity = _cond(0.16, age_curve=(0.2, 0.6, 1, 1.2, 1.3, 1.3, 1.1, 0.8, 0.5, 0.4, 0.4),
                    visit_burden=0.1, p_code=0.35)
  c.smoking = _cond(0.13, age_curve=_gompertz(0.0, start=20), male_rr=1.4, p_code=0.3)
  c.alcohol = _cond(0.04, age_curve=_gompertz(0.0, start=20), male_rr=2.0, p_code=0.3)
  c.asthma = _cond(0.07, age_curve=child, p_code=0.4, visit_burden=0.1)
  c.depression = _cond(0.10, age_curve=_gompertz(0.0, start=10), male_rr=0.6, p_code=0.4,
                       visit_burden=0.2)
  c.cancer = _cond(0.035, age_curve=steep, p_code=0.5, visit_burden=0.8, frailty_sigma=0.3)
  c.scd = _cond(freq["scd"], prevalent_only=True, p_code=0.35, visit_burden=0.5)
  c.sickle_other = _cond(0.0006, prevalent_only=True, p_code=0.4, visit_burden=0.8)
  c.htn = _cond(0.24, age_curve=rising, risk={"obesity": 2.0, "alcohol": 1.3}, p_code=0.5,
                visit_burden=0.15)
  c.lipid = _cond(freq["lipid"], age_curve=adult, male_rr=1.2,
                  risk={"obesity": 1.8, "htn": 1.5, "smoking": 1.2}, p_code=0.45, visit_burden=0.1,
                  frailty_sigma=0.8)
  c.dyslipidemia_other = _cond(0.07, age_curve=adult, male_rr=1.2,
                               risk={"obesity": 1.8, "htn": 1.5}, p_code=0.45, visit_burden=0.1)
  c.prediabetes = _cond(0.07, age_curve=adult, risk={"obesity": 2.5, "htn": 1.3}, p_code=0.4)
  c.dm = _cond(freq["dm"], age_curve=rising,
               risk={"obesity": 2.5, "prediabetes": 4.0, "htn": 1.5, "lipid": 1.4,
                     "dyslipidemia_other": 1.4},
               p_code=0.55, visit_burden=0.3, frailty_sigma=0.8)
  c.ckd = _cond(0.035, age_curve=steep, risk={"dm": 3.0, "htn": 2.5}, p_code=0.45,
                visit_burden=0.4)
  c.cad = _cond(0.05, age_curve=steep, male_rr=1.8,
                risk={"lipid": 2.5, "dyslipidemia_other": 2.0, "dm": 2.0, "htn": 2.0, "smoking": 2.0},
                p_code=0.45, visit_burden=0.3)
  c.copd = _cond(0.045, age_curve=steep, risk={"smoking": 6.0, "asthma": 1.5}, p_code=0.45,
                 visit_burden=0.3)
  c.hf = _cond(0.025, age_curve=steep,
               risk={"cad": 3.0, "htn": 2.0, "dm": 1.5, "obesity": 1.5, "ckd": 1.5},
               p_code=0.5, visit_burden=0.5)
  c.vte = _cond(0.015, age_curve=rising, risk={"cancer": 3.0, "obesity": 1.5}, p_code=0.4)
  c.dys = _cond(freq["dys"], age_curve=rising,
                risk={"htn": 1.8, "hf": 3.0, "cad": 1.8, "obesity": 1.3, "alcohol": 1.5,
                      "copd": 1.3},
                p_code=0.4, visit_burden=0.2, frailty_sigma=0.9)
  c.cond = _cond(freq["cond"], age_curve=steep, risk={"dys": 2.5, "hf": 2.5, "cad": 2.0},
                 p_code=0.35, visit_burden=0.1, frailty_sigma=0.9)
  # ------------------------------------------------------------ acute events (non-cohort)
  c.surgery = _cond(rate_per_year=0.025, age_curve=rising,
                    risk={"obesity": 1.5, "cancer": 2.0, "cad": 1.3})
  c.screening = _cond(rate_per_year=0.06, age_curve=_gompertz(0.0, start=50))
  c.uti = _cond(rate_per_year=0.05, age_curve=u_shape, male_rr=0.3, risk={"dm": 1.5})
  c.uri = _cond(rate_per_year=0.25, age_curve=child, risk={"asthma": 1.5, "copd": 1.5})
  c.chest_pain = _cond(rate_per_year=0.02, age_curve=adult, risk={"cad": 3.0, "lipid": 1.3})
  c.sickle_crisis = _cond(rate_per_year=2.5, requires=("scd", "sickle_other"), frailty_sigma=1.0)
  c.tia = _cond(rate_per_year=0.004, age_curve=steep, risk={"dys": 3.0, "htn": 2.0})
  # ------------------------------------------------------------ acute cohorts
  c.ami = _cond(freq["ami"], workup_prob=0.5, age_curve=steep, male_rr=2.0,
                risk={"cad": 6.0, "lipid": 2.0, "dyslipidemia_other": 1.5, "dm": 2.0, "htn": 1.8,
                      "smoking": 2.2, "ckd": 1.5},
                recur_per_year=0.05)
  c.pneu = _cond(freq["pneu"], workup_prob=0.5, age_curve=u_shape,
                 risk={"copd": 3.0, "asthma": 1.5, "smoking": 1.5, "hf": 2.0, "dm": 1.3, "ckd": 1.5,
                       "cancer": 1.5, "scd": 4.0, "sickle_other": 4.0},
                 recent={"uri": 4.0}, recent_months=1, recur_per_year=0.1)
  c.sep = _cond(freq["sep"], workup_prob=0.5, age_curve=u_shape,
                risk={"dm": 1.8, "ckd": 2.0, "cancer": 2.5, "copd": 1.5, "hf": 1.5, "alcohol": 1.5},
                recent={"pneu": 12.0, "uti": 6.0, "surgery": 4.0, "sickle_crisis": 3.0},
                recent_months=1, recur_per_year=0.05)
  c.cvd = _cond(freq["cvd"], workup_prob=0.5, age_curve=steep,
                risk={"dys": 4.0, "htn": 2.5, "dm": 1.7, "smoking": 1.8, "lipid": 1.5, "cad": 1.5,
                      "hf": 1.5, "scd": 5.0, "sickle_other": 5.0},
                recent={"tia": 8.0}, recent_months=3, recur_per_year=0.05)
  c.gi_hem = _cond(freq["gi_hem"], workup_prob=0.5, age_curve=rising,
                   risk={"alcohol": 3.0, "dys": 1.8, "vte": 2.0, "ckd": 1.8, "cancer": 1.5, "cad": 1.3},
                   recur_per_year=0.1)
  c.pleu = _cond(freq["pleu"], workup_prob=0.5, age_curve=rising,
                 risk={"copd": 2.5, "cancer": 3.0, "hf": 2.0, "smoking": 1.5},
                 recent={"pneu": 10.0, "surgery": 3.0}, recent_months=1, recur_per_year=0.05)
  c.resp = _cond(freq["resp"], workup_prob=0.5, age_curve=rising,
                 risk={"copd": 6.0, "hf": 2.5, "obesity": 1.3, "asthma": 1.5},
                 recent={"pneu": 15.0, "sep": 10.0}, recent_months=1, recur_per_year=0.1)
  c.renal = _cond(freq["renal"], workup_prob=0.6, age_curve=steep,
                  risk={"ckd": 5.0, "dm": 1.8, "hf": 2.0, "htn": 1.4},
                  recent={"sep": 10.0, "pneu": 2.0, "gi_hem": 3.0, "surgery": 2.0, "ami": 3.0},
                  recent_months=1, recur_per_year=0.1)
  c.shock = _cond(freq["shock"], workup_prob=0.6, age_curve=rising, risk={"hf": 2.0, "cad": 1.3},
                  recent={"sep": 80.0, "ami": 20.0, "gi_hem": 15.0, "pneu": 4.0, "surgery": 5.0},
                  recent_months=1, recur_per_year=0.02)
  c.surg = _cond(freq["surg"], workup_prob=0.6, age_curve=rising, risk={"cancer": 4.0, "dm": 1.5, "obesity": 1.3},
                 recent={"surgery": 60.0}, recent_months=3, recur_per_year=0.05)
  c.fluid = _cond(freq["fluid"], workup_prob=0.3, age_curve=u_shape,
                  risk={"ckd": 2.5, "hf": 2.0, "dm": 1.5, "htn": 1.3, "alcohol": 1.5, "cancer": 1.5},
                  recent={"sep": 5.0, "renal": 5.0, "gi_hem": 3.0, "pneu": 2.0, "uti": 2.0},
                  recent_months=1, recur_per_year=0.3, frailty_sigma=0.8)
  return cfg


def validate_config(cfg) -> None:
  """Raises `ConfigError` naming the field when the simulator config cannot be used."""
  names = list(catalog.CONDITIONS)
  missing = [n for n in names if n not in cfg.conditions]
  if missing:
    raise ConfigError(f"data.simulator.conditions lacks {', '.join(missing)} (start from "
                      "simulate.default_config())")
  for i, name in enumerate(names):
    cc = cfg.conditions[name]
    where = f"data.simulator.conditions.{name}"
    if len(cc.age_curve) != len(_AGES) or min(cc.age_curve) < 0:
      raise ConfigError(f"{where}.age_curve needs {len(_AGES)} non-negative values (ages 0..100)")
    if not 0 <= cc.prevalence <= 1 or cc.rate_per_year < 0:
      raise ConfigError(f"{where}: prevalence must be in [0, 1] and rate_per_year >= 0")
    if name in COHORTS and cc.prevalence <= 0:
      raise ConfigError(f"{where}.prevalence must be > 0: Table-4 cohorts are drawn by exact count")
    for f in list(cc.risk) + list(cc.recent) + list(cc.requires):
      if f not in names[:i]:
        raise ConfigError(f"{where}: risk factor {f!r} must be a condition listed before "
                          f"{name!r} in simulator_catalog.CONDITIONS")
    for f in cc.recent:
      if f in catalog.CHRONIC:
        raise ConfigError(f"{where}.recent.{f}: only acute conditions have recent episodes; use risk")
  if cfg.num_months < 12 or cfg.enroll_min_months < 1:
    raise ConfigError("data.simulator: num_months must be >= 12 and enroll_min_months >= 1")
  if cfg.max_events < 10:
    raise ConfigError("data.simulator.max_events must be >= 10")


# ====================================================================== code tables
@functools.lru_cache(maxsize=4)
def background_codes(tail_size: int, catalog_seed: int) -> tuple[str, ...]:
  """Background diagnoses, most frequent first: the catalog's head, then ICD-10-CM leaf codes.

  The tail leaves out chapters that need a context the simulator does not model (injuries and
  external causes S-Y, pregnancy O, perinatal P) and every 3-character family of a Table-4 code,
  so a background draw never lands in a cohort or next to one.
  """
  targets = {c.split("/", 1)[1] for co in COHORTS.values() for c in co.codes}
  families = {t[:3] for t in targets}
  head = [c for c in catalog.BACKGROUND_HEAD if c[:3] not in families]
  used = set(head) | {c for cc in catalog.CONDITIONS.values() for c, _ in cc.codes}
  pool = sorted(c for c in icd10cm_leaves()
                if c[0] not in "OPSTVWXY" and c[:3] not in families and c not in used)
  order = np.random.default_rng(catalog_seed).permutation(len(pool))[:tail_size]
  return tuple(head + [pool[i] for i in order])


def icd10cm_leaves() -> list[str]:
  """All leaf codes of the installed `simple_icd_10_cm` release, without dots.

  Importing the package parses its XML release (several seconds), so the list is kept in a cache
  file named after the package version (`$RLTF_CACHE`, else ~/.cache/rltf_jax).
  """
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  version = importlib.metadata.version("simple_icd_10_cm")
  cache = Path(os.environ.get("RLTF_CACHE", Path.home() / ".cache" / "rltf_jax"))
  path = cache / f"icd10cm_leaves-{version}.txt"
  if path.exists():
    codes = path.read_text().split()
    if codes:
      return codes
  import simple_icd_10_cm as icd  # pylint: disable=g-import-not-at-top
  codes = sorted(c for c in icd.get_all_codes(with_dots=False)
                 if len(c) >= 3 and "-" not in c and icd.is_leaf(c))
  try:
    rltf_io.atomic_write_text(path, "\n".join(codes) + "\n")
  except OSError:
    pass  # a read-only home only costs the parse next time
  return codes


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
    self._recent_cache: dict[tuple[str, int], np.ndarray] = {}

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

  # ---------------------------------------------------------------- 2. conditions
  def _has_before(self, factor: str) -> np.ndarray:
    """bool [P, M]: the factor began in an earlier month."""
    return self.onset_month[factor][:, None] < np.arange(self.M)[None, :]

  def _recent(self, factor: str, months: int) -> np.ndarray:
    """bool [P, M]: an episode of `factor` in this month or the `months - 1` before (cached)."""
    key = (factor, months)
    if key not in self._recent_cache:
      pat, mon, _ = self.episodes[factor]
      ind = np.zeros((self.P, self.M + 1), np.int16)
      ind[pat, mon + 1] = 1
      cs = np.cumsum(ind, axis=1, dtype=np.int16)   # cs[:, m + 1]: months with episodes up to m
      lo = np.maximum(np.arange(self.M) + 1 - months, 0)
      self._recent_cache[key] = (cs[:, 1:] - cs[:, lo]) > 0
    return self._recent_cache[key]

  def _hazard(self, name: str, cc, rng) -> tuple[np.ndarray, np.ndarray]:
    """(window hazard [P, M] per month, hazard accumulated before enrolment [P])."""
    ages_year = np.arange(_MAX_AGE + 1) + 0.5
    per_year = np.interp(ages_year, _AGES, cc.age_curve)
    cum = np.concatenate([[0.0], np.cumsum(per_year)])
    w = (per_year / 12.0).astype(np.float32)[self.age_pm]
    w *= self.active
    pre = np.interp(self.age_start, np.arange(_MAX_AGE + 2), cum)
    if cc.prevalent_only:
      w[:] = 0.0
      pre = np.ones(self.P)
    scale = np.where(self.sex == 1, cc.male_rr, 1.0)
    for f, rr in cc.risk.items():
      np.multiply(w, np.float32(rr), out=w, where=self._has_before(f))
      scale_pre = np.where(self.onset_month[f] < self.start, rr, 1.0)
      pre = pre * scale_pre
    for f, rr in cc.recent.items():
      np.multiply(w, np.float32(rr), out=w, where=self._recent(f, cc.recent_months))
    if cc.requires:
      ok = np.zeros((self.P, self.M), bool)
      ok_pre = np.zeros(self.P, bool)
      for f in cc.requires:
        ok |= self._has_before(f) | (self.onset_month[f][:, None] < 0)
        ok_pre |= self.onset_month[f] < self.start
      w *= ok
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

    bg = self.codes.table([(c, 1.0 / (r + 1) ** vc.background_zipf)
                           for r, c in enumerate(background_codes(vc.background_tail, vc.catalog_seed))])
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
          has = r.random(self.P) < prob
          at = vis[has[vp[vis]] & (r.random(len(vis)) < vc.item_per_visit)]
          emit(at, self.codes.id(code), rank)
    # Acute episodes, and their follow-up codes at later routine visits.
    for ci, name in enumerate(names):
      if name in catalog.CHRONIC:
        continue
      book = catalog.CONDITIONS[name]
      r = self.rng("codes", name)
      ep = np.flatnonzero((kind == 2) & (vcond == ci))
      work = self.v_work[ep]
      emit(ep[work], _draw(r, self.codes.table(book.presenting or book.codes), work.sum()), 0)
      emit(ep[~work], _draw(r, bg, (~work).sum()), 0)
      emit(ep, _draw(r, self.codes.table(book.codes), len(ep)), 3)
      emit_each(r, ep[work], book.related, 4)
      emit_each(r, ep[work], book.procedures, 5)
      emit_each(r, ep[work], book.meds, 6)
      if book.followup:
        worked_up = np.zeros(self.P, bool)
        worked_up[vp[ep[work]]] = True
        after = np.flatnonzero(routine & (self.onset_day[name][vp] < vd))
        for code, prob in book.followup:
          has = worked_up & (r.random(self.P) < prob)
          emit(after[has[vp[after]] & (r.random(len(after)) < vc.followup_per_visit)],
               self.codes.id(code), 4)
    # Everyday procedures and drugs at routine visits, and related codes for other indications
    # (so that no related code marks a cohort by itself).
    rng = self.rng("codes", "routine")
    rv = np.flatnonzero(routine & ~lab)
    pool = self.codes.table([(c, 1.0) for c in _sporadic_pool()])
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
        subject_id=np.arange(1, self.P + 1, dtype=np.int64), sex=self.sex, birth_day=self.birth_day,
        offsets=offsets, code=remap[ev_c], day=self.v_day[ev_v], visit=self.v_index[ev_v],
        pos=self.v_pos[ev_v], codes=table[order], source="simulator")


@functools.lru_cache(maxsize=1)
def _sporadic_pool() -> tuple[str, ...]:
  """Every non-target code the catalog's conditions emit (sorted, for a stable table)."""
  targets = {c for co in COHORTS.values() for c in co.codes}
  pool = set()
  for name, book in catalog.CONDITIONS.items():
    for field in ("codes", "presenting", "related", "procedures", "meds", "followup"):
      if field == "codes" and name in COHORTS:
        continue
      pool.update(catalog.canonical(c) for c, _ in getattr(book, field))
  # A sickle-cell code has no other indication.
  return tuple(sorted(c for c in pool - targets if not c.startswith("ICD10CM/D57")))


def _stable_hash(x: Any) -> int:
  """A seed word for a stage name that does not change between Python runs."""
  if isinstance(x, (int, np.integer)):
    return int(x)
  h = 2166136261
  for b in str(x).encode():
    h = ((h ^ b) * 16777619) & 0xFFFFFFFF
  return h


# ====================================================================== properties and report
def code_count_matrix(ds: PatientEvents):
  """scipy `csr_matrix` [patients, codes] of per-patient code counts (CatBoost takes csr_matrix,
  not the newer sparse arrays)."""
  from scipy import sparse  # pylint: disable=g-import-not-at-top
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
  from catboost import CatBoostClassifier  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import StratifiedKFold  # pylint: disable=g-import-not-at-top
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


def properties(ds: PatientEvents, cfg=None) -> dict[str, Any]:
  """The draw's checkable properties: sizes, code spread, cohorts, and whether history matters."""
  from rltf_jax.data.codes import CodeType  # pylint: disable=g-import-not-at-top
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
      patients_at_cap=int((lens >= (cfg.max_events if cfg else 10**9)).sum()),
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


def format_report(props: dict[str, Any], aurocs: dict[str, dict[str, float]] | None = None) -> str:
  """The properties as a readable text table."""
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
      f"{'at 0':>5s} {'AUROC':>6s}",
  ]
  for name, c in p["cohorts"].items():
    auc = aurocs.get(name, {}).get("auroc", float("nan")) if aurocs else float("nan")
    lines.append(f"{c['abbrev']:8s} {c['paper_percent']:8.3f} {c['percent']:8.3f} {c['ratio']:6.2f} "
                 f"{c['positives']:6d} {c['median_first_target_position']:8.0f} "
                 f"{c['target_first_event_share']:5.2f} {auc:6.3f}")
  lines += ["", "  (1st pos: median position of the first target event; at 0: share of positives whose",
            "   first event is a target; AUROC: CatBoost on counts of non-target codes, cross-fitted)",
            "", "history (relative risk of the target with the factor coded before it):"]
  lines += [f"  {k:28s} {v:7.2f}" for k, v in p["history"].items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m rltf_jax.data.simulate",
      description="Draw synthetic claims; write them as MEDS (--out) and/or print their properties "
                  "(--report).")
  parser.add_argument("--patients", type=int, default=20_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="", help="write the draw as a MEDS dataset to this directory")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
  parser.add_argument("--report", action="store_true", help="print the draw's properties")
  parser.add_argument("--report-json", default="", help="also write the properties as JSON here")
  parser.add_argument("--auroc-iterations", type=int, default=30,
                      help="CatBoost iterations per cohort in the report (0 skips the AUROCs)")
  parser.add_argument("--threads", type=int, default=2, help="CatBoost thread count")
  args = parser.parse_args(argv)
  if args.patients <= 0:
    raise ConfigError(f"--patients must be a positive number of patients, got {args.patients}")
  if not (args.out or args.report or args.report_json):
    raise ConfigError("nothing to do: pass --out DIR (write MEDS) and/or --report / --report-json")
  cfg = default_config()
  print(f"simulating {args.patients:,} patients (seed {args.seed})", file=sys.stderr, flush=True)
  t0 = time.time()
  ds = simulate(cfg, args.patients, args.seed, verbose=True)
  seconds = time.time() - t0
  print(f"simulated {ds.num_events:,} events in {seconds:.1f} s", file=sys.stderr, flush=True)
  if args.out:
    from rltf_jax.data import meds  # pylint: disable=g-import-not-at-top
    # No split file: load_dataset assigns splits from the config (by subject id hash).
    path = meds.write_meds(ds, args.out, overwrite=args.overwrite, splits=False,
                           descriptions=_descriptions(ds.codes))
    print(f"wrote MEDS dataset {path}", file=sys.stderr)
  if args.report or args.report_json:
    props = properties(ds, cfg)
    props.update(seconds=seconds, seed=args.seed)
    aurocs = None
    if args.auroc_iterations > 0:
      print("fitting CatBoost per cohort ...", file=sys.stderr, flush=True)
      aurocs = cohort_aurocs(ds, iterations=args.auroc_iterations, thread_count=args.threads,
                             seed=args.seed)
      props["aurocs"] = aurocs
    if args.report:
      print(format_report(props, aurocs))
    if args.report_json:
      rltf_io.atomic_write_json(args.report_json, props)
  return 0


def _descriptions(codes) -> dict[str, str]:
  """ICD-10-CM descriptions for the MEDS code metadata (older-release codes have none)."""
  try:
    import simple_icd_10_cm as icd  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  out = {}
  for c in codes:
    if c.startswith("ICD10CM/") and icd.is_valid_item(c[8:]):
      out[str(c)] = icd.get_description(c[8:])
  return out


if __name__ == "__main__":
  cli_main(main)
