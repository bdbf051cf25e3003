"""The claims simulator's parameters: every number that shapes who gets a condition and when.

`get_config()` is `cfg.data.simulator` (configs/base.py). The simulator (the generative story in
`rltf_jax/data/simulate/story.py`) reads these fields and has no defaults of its own; its code
tables (which codes a condition writes) are `rltf_jax/data/simulate/catalog.py`. Conditions are
listed in the catalog's generative order: a condition's risk factors come before it.

Every Table-4 cohort is drawn by exact count at the paper's frequency (`TABLE4_PERCENT`); the
laptop-size floor `data.min_cohort_percent` is applied when the data is drawn, not here, so that
a command-line override of the floor takes effect.

CALIBRATION. How well a cohort's non-target history predicts it is set per cohort so that the
evaluation's real-record AUROC (CatBoost on non-target code counts, members vs non-members, as
`rltf_jax/evaluation/utility.py` measures it) lies near the paper's Table 6 "Real" column: the
paper's claims are that hard, and a simulator that is easier (or harder) would let a generator
look better (or worse) than it could on the paper's data. The knobs, all acting in the visits and
codes step, so prevalence (exact counts) and which condition emits a cohort's target codes do not
change:
  workup_prob  (acute cohorts) the share of episodes seen with their work-up (presenting
               complaint, related codes, procedures, drugs, an emergency or inpatient place of
               service, a follow-up visit); the rest are coded at an office visit with no
               companions, visible to a classifier only through their risk factors.
               AUROC rises with it, from the risk-factor floor to about 0.99.
  item_scale   (every condition; used on dm, lipid and cond) a multiplier on the catalog's
               probabilities of related codes, procedures and drugs; AUROC rises with it.
and, for the surgical-complication cohort, whose floor at `workup_prob` 0 was 0.87 (paper 0.79),
its hazard ratios after a recent surgery (60 -> 12) and with cancer (4 -> 1.5): conditions-step
knobs (the count stays exact); the history still shows a relative risk near 4 after surgery.
The values were found by bisection on `rltf_jax.evaluation.simulator_calibration.calibration_aurocs`
(200,000-patient enriched draws, 500 members per cohort, CatBoost 200 iterations, depth 6) and
checked on an independent draw with `python -m rltf_jax.data.simulate --patients 50000 --report`,
which prints the measured AUROC beside the paper's. SCD is not calibrated (paper 0.58, ours about
0.9-0.99): the foundation issue requires the sickle-cell care pattern (crises, hydroxyurea, ER
visits) in most SCD patients, which a classifier cannot miss.
"""

import math

import ml_collections

# The paper's Table 4: each cohort's frequency in its claims data, percent of patients (the
# cohort table of the library, rltf_jax/data/cohorts.py, lists the same numbers; a test checks).
TABLE4_PERCENT = {
    "sep": 0.871, "surg": 0.64, "scd": 0.036, "dm": 11.13, "lipid": 4.857, "fluid": 21.5,
    "ami": 0.524, "cond": 1.767, "dys": 6.643, "cvd": 0.648, "pneu": 1.611, "pleu": 0.516,
    "resp": 1.167, "gi_hem": 1.517, "renal": 1.319, "shock": 0.341,
}
_AGES = range(0, 101, 10)  # the points of every age curve


def _gompertz(slope: float, start: int = 0, center: int = 50) -> tuple[float, ...]:
  """Age curve exp(slope * (age - center)) at ages 0, 10, ..., 100, zero below `start`."""
  return tuple(0.0 if a < start else round(math.exp(slope * (a - center)), 4) for a in _AGES)


def _cond(prevalence=0.0, rate_per_year=0.0, age_curve=None, male_rr=1.0, risk=None, recent=None,
          recent_months=1, requires=(), p_code=0.5, recur_per_year=0.0, frailty_sigma=0.5,
          visit_burden=0.0, prevalent_only=False, workup_prob=1.0, item_scale=1.0
          ) -> ml_collections.ConfigDict:
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
  # Multiplies the catalog's probabilities of the condition's related codes, procedures, drugs
  # (and, acute, follow-up codes); probabilities above 1 act as 1. With `workup_prob` it sets how
  # well the history predicts a cohort (calibrated, see CALIBRATION below).
  c.item_scale = float(item_scale)
  return c


def get_config() -> ml_collections.ConfigDict:
  """All numeric knobs of the simulator."""
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
  freq = {name: percent / 100 for name, percent in TABLE4_PERCENT.items()}
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
                  frailty_sigma=0.8, item_scale=1.2)
  c.dyslipidemia_other = _cond(0.07, age_curve=adult, male_rr=1.2,
                               risk={"obesity": 1.8, "htn": 1.5}, p_code=0.45, visit_burden=0.1)
  c.prediabetes = _cond(0.07, age_curve=adult, risk={"obesity": 2.5, "htn": 1.3}, p_code=0.4)
  c.dm = _cond(freq["dm"], age_curve=rising,
               risk={"obesity": 2.5, "prediabetes": 4.0, "htn": 1.5, "lipid": 1.4,
                     "dyslipidemia_other": 1.4},
               p_code=0.55, visit_burden=0.3, frailty_sigma=0.8, item_scale=1.4)
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
                 p_code=0.35, visit_burden=0.1, frailty_sigma=0.9, item_scale=3.5)
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
  c.pneu = _cond(freq["pneu"], workup_prob=0.6, age_curve=u_shape,
                 risk={"copd": 3.0, "asthma": 1.5, "smoking": 1.5, "hf": 2.0, "dm": 1.3, "ckd": 1.5,
                       "cancer": 1.5, "scd": 4.0, "sickle_other": 4.0},
                 recent={"uri": 4.0}, recent_months=1, recur_per_year=0.1)
  c.sep = _cond(freq["sep"], workup_prob=0.94, age_curve=u_shape,
                risk={"dm": 1.8, "ckd": 2.0, "cancer": 2.5, "copd": 1.5, "hf": 1.5, "alcohol": 1.5},
                recent={"pneu": 12.0, "uti": 6.0, "surgery": 4.0, "sickle_crisis": 3.0},
                recent_months=1, recur_per_year=0.05)
  c.cvd = _cond(freq["cvd"], workup_prob=0.5, age_curve=steep,
                risk={"dys": 4.0, "htn": 2.5, "dm": 1.7, "smoking": 1.8, "lipid": 1.5, "cad": 1.5,
                      "hf": 1.5, "scd": 5.0, "sickle_other": 5.0},
                recent={"tia": 8.0}, recent_months=3, recur_per_year=0.05)
  c.gi_hem = _cond(freq["gi_hem"], workup_prob=0.27, age_curve=rising,
                   risk={"alcohol": 3.0, "dys": 1.8, "vte": 2.0, "ckd": 1.8, "cancer": 1.5, "cad": 1.3},
                   recur_per_year=0.1)
  c.pleu = _cond(freq["pleu"], workup_prob=0.75, age_curve=rising,
                 risk={"copd": 2.5, "cancer": 3.0, "hf": 2.0, "smoking": 1.5},
                 recent={"pneu": 10.0, "surgery": 3.0}, recent_months=1, recur_per_year=0.05)
  c.resp = _cond(freq["resp"], workup_prob=0.88, age_curve=rising,
                 risk={"copd": 6.0, "hf": 2.5, "obesity": 1.3, "asthma": 1.5},
                 recent={"pneu": 15.0, "sep": 10.0}, recent_months=1, recur_per_year=0.1)
  c.renal = _cond(freq["renal"], workup_prob=0.6, age_curve=steep,
                  risk={"ckd": 5.0, "dm": 1.8, "hf": 2.0, "htn": 1.4},
                  recent={"sep": 10.0, "pneu": 2.0, "gi_hem": 3.0, "surgery": 2.0, "ami": 3.0},
                  recent_months=1, recur_per_year=0.1)
  c.shock = _cond(freq["shock"], workup_prob=1.0, age_curve=rising, risk={"hf": 2.0, "cad": 1.3},
                  recent={"sep": 80.0, "ami": 20.0, "gi_hem": 15.0, "pneu": 4.0, "surgery": 5.0},
                  recent_months=1, recur_per_year=0.02)
  c.surg = _cond(freq["surg"], workup_prob=0.0, age_curve=rising, risk={"cancer": 1.5, "dm": 1.5, "obesity": 1.3},
                 recent={"surgery": 12.0}, recent_months=3, recur_per_year=0.05)
  c.fluid = _cond(freq["fluid"], workup_prob=0.55, age_curve=u_shape,
                  risk={"ckd": 2.5, "hf": 2.0, "dm": 1.5, "htn": 1.3, "alcohol": 1.5, "cancer": 1.5},
                  recent={"sep": 5.0, "renal": 5.0, "gi_hem": 3.0, "pneu": 2.0, "uti": 2.0},
                  recent_months=1, recur_per_year=0.3, frailty_sigma=0.8)
  return cfg
