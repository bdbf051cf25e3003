"""The paper's target cohorts (its Table 4).

A patient belongs to a cohort when any of the cohort's ICD-10-CM codes occurs in their history;
"the target" of a fine-tune is that code set. The table lists 16 rows although the paper's text says
15 cohorts; all 16 are available. The AMI codes are given as corrected in `method.md` (the paper's
OCR wrote `12109` for `I2109`); older-release codes such as `T814XXA`, `E780` and `E872` are kept
as they are.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rltf_jax.data.codes import icd10cm
from rltf_jax.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Cohort:
  name: str                 # config key, e.g. "scd"
  abbrev: str               # the paper's abbreviation, e.g. "SCD"
  disease: str
  codes: tuple[str, ...]    # canonical codes, e.g. ("ICD10CM/D573",)
  paper_frequency_percent: float
  rare_in_paper: bool

  @property
  def acute(self) -> bool:
    """An acute condition (episodes that begin during a record), as opposed to a chronic one that a
    record mostly carries from its start: for acute cohorts the new-onset stratum is the claim."""
    return self.name not in CHRONIC_COHORTS


_TABLE4 = [
    ("sep", "Sep.", "Septicemia Except In Labor",
     "A4101 A4150 A4151 A4189 A419 R7881 R6520", 0.871, True),
    ("surg", "Surg.", "Complications Of Surgical Procedures Or Medical Care",
     "D6481 T82818A I9581 J95811 K9423 K9189 K912 R5082 T889XXS I9789 I973 T888XXA T8130XA "
     "T8131XA T814XXA T8189XA Z283", 0.64, True),
    ("scd", "SCD", "Sickle Cell Disease", "D573", 0.036, True),
    ("dm", "DM", "Diabetes Mellitus Without Complication",
     "E109 E139 E119 R7301 R7302 R7309 R81 Z9641", 11.13, False),
    ("lipid", "Lipid.", "Disorders Of Lipid Metabolism", "E780 E781 E782 E785", 4.857, False),
    ("fluid", "Fluid.", "Fluid And Electrolyte Disorders",
     "E870 E871 E872 E873 E874 E869 E860 E861 E8779 E875 E876 E878 T783XXA", 21.5, False),
    ("ami", "AMI", "Acute Myocardial Infarction", "I2109 I2119 I2129 I214 I213", 0.524, True),
    ("cond", "Cond.", "Conduction Disorders",
     "I442 I4430 I440 I441 I4469 I447 I4510 I454 I452 I4581 I4589 I459 Z959 Z950 Z95810 Z95818 "
     "Z45018 Z4502", 1.767, False),
    ("dys", "Dys.", "Cardiac Dysrhythmias",
     "I471 I472 I479 I4891 I4892 I491 I4949 R001 I499 R000 R002", 6.643, False),
    ("cvd", "CVD", "Acute Cerebrovascular Disease",
     "I609 I619 I6200 I629 I63239 I6330 I669 I6340 I6350 I6789", 0.648, True),
    ("pneu", "Pneu.", "Pneumonia Except That Caused By Tuberculosis Or Sexually Transmitted Disease",
     "J17 J129 J181 J158 J156 J159 J168 J180 J189", 1.611, False),
    ("pleu", "Pleu.", "Pleurisy; Pneumothorax; Pulmonary Collapse",
     "J869 R091 J942 J948 J918 J939 J9819", 0.516, True),
    ("resp", "Resp.", "Respiratory Failure; Insufficiency; Arrest Adult",
     "J9600 J9620 J9690 J80 J9610 Z9911 Z9981", 1.167, False),
    ("gi_hem", "GI Hem.", "Gastrointestinal Hemorrhage", "K228 K254 K625 K920 K921 K922", 1.517, False),
    ("renal", "Renal.", "Acute And Unspecified Renal Failure", "N170 N178 N179 N19", 1.319, False),
    ("shock", "Shock", "Shock", "R579 R570 R6521 R578", 0.341, True),
]

# Chronic cohorts (the simulator's story treats the same ones as chronic; a test checks).
CHRONIC_COHORTS = ("scd", "dm", "lipid", "dys", "cond")

COHORTS: dict[str, Cohort] = {
    name: Cohort(name, abbrev, disease, tuple(icd10cm(c) for c in codes.split()), freq, rare)
    for name, abbrev, disease, codes, freq, rare in _TABLE4
}


def get_cohort(name: str) -> Cohort:
  """Looks a cohort up by config key ("scd") or the paper's abbreviation ("SCD", "GI Hem.")."""
  key = name.strip().lower().rstrip(".").replace(" ", "_")
  if key in COHORTS:
    return COHORTS[key]
  for c in COHORTS.values():
    if c.abbrev.lower() == name.strip().lower():
      return c
  raise ConfigError(f"unknown cohort {name!r}; choose one of: {', '.join(COHORTS)}")


def cohort_membership(dataset, cohort: Cohort) -> np.ndarray:
  """bool [num_patients]: whether each patient has any of the cohort's codes."""
  return dataset.patients_with_any(cohort.codes)


def require_positives(dataset, cohort: Cohort, where: str) -> np.ndarray:
  """Membership as `cohort_membership`, or a `DataError` when no patient of `where` is positive."""
  member = cohort_membership(dataset, cohort)
  if not member.any():
    raise DataError(
        f"cohort {cohort.name!r} ({cohort.disease}) has no positive patient in {where} "
        f"({dataset.num_patients} patients; codes {', '.join(cohort.codes)}); "
        "choose another cohort or a larger or different data source")
  return member
