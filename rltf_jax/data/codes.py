"""Canonical medical-code strings and their code types.

Every code inside the project is a string `SYSTEM/VALUE`, with dots removed from ICD values:
`ICD10CM/E119`, `ICD9CM/4019`, `ICD10PCS/0DTJ4ZZ`, `CCSPX/47`, `ATC/A10BA02`. The system prefix
decides the code type. `normalize_code` maps the spellings met in MEDS and MIMIC exports onto that
form, so `ICD10CM/E11.9`, `DIAGNOSIS//ICD//10//E119` and (by default) a bare `E119` are one code.
A MEDS lab code `LAB//50912//mg/dL` becomes `LAB/50912//mg/dL` (its own system, not `OTHER/`); the
MIMIC-IV MEDS ETL's `MEDICATION//START//Aspirin` becomes `DRUG/Aspirin` (its `MEDICATION//STOP//...`
rows stay `OTHER/`).

Code families (`FAMILIES`, chosen by `data.include`) group the code types by what a record keeps:
diagnoses (ICD10CM/, ICD9CM/), procedures (ICD10PCS/, ICD9PCS/, CCSPX/, CPT/, HCPCS/),
medications (ATC/, RXNORM/, NDC/, DRUG/), labs (LAB/, LOINC/) and other (every other prefix).
"""

from __future__ import annotations

import enum
import re

import numpy as np


class CodeType(enum.IntEnum):
  """What kind of event a code records. Stored as int8 in arrays."""
  OTHER = 0
  DIAGNOSIS = 1        # ICD-10-CM
  DIAGNOSIS_ICD9 = 2   # ICD-9-CM: kept apart, never merged with ICD-10-CM
  PROCEDURE = 3        # ICD-10-PCS, CCS procedure classes, CPT/HCPCS
  PROCEDURE_ICD9 = 4   # ICD-9-CM volume 3 procedures
  MEDICATION = 5       # ATC, RxNorm, NDC, drug names
  DEMOGRAPHIC = 6
  LAB = 7              # laboratory measurements (MEDS `LAB//...`, LOINC)


SYSTEM_TYPES: dict[str, CodeType] = {
    "ICD10CM": CodeType.DIAGNOSIS,
    "ICD9CM": CodeType.DIAGNOSIS_ICD9,
    "ICD10PCS": CodeType.PROCEDURE,
    "ICD9PCS": CodeType.PROCEDURE_ICD9,
    "CCSPX": CodeType.PROCEDURE,
    "CPT": CodeType.PROCEDURE,
    "HCPCS": CodeType.PROCEDURE,
    "ATC": CodeType.MEDICATION,
    "RXNORM": CodeType.MEDICATION,
    "NDC": CodeType.MEDICATION,
    "DRUG": CodeType.MEDICATION,
    "GENDER": CodeType.DEMOGRAPHIC,
    "LAB": CodeType.LAB,
    "LOINC": CodeType.LAB,
}

# What `data.include` chooses from, by code type; "other" holds every type not listed (OTHER/,
# demographic codes). The paper's records are diagnoses, procedures and medications.
FAMILIES: dict[str, tuple[CodeType, ...]] = {
    "diagnoses": (CodeType.DIAGNOSIS, CodeType.DIAGNOSIS_ICD9),
    "procedures": (CodeType.PROCEDURE, CodeType.PROCEDURE_ICD9),
    "medications": (CodeType.MEDICATION,),
    "labs": (CodeType.LAB,),
    "other": (CodeType.OTHER, CodeType.DEMOGRAPHIC),
}
PAPER_FAMILIES = ("diagnoses", "procedures", "medications")

# Synonyms for system names seen in the wild (MEDS ETLs, OMOP vocabularies).
_SYSTEM_ALIASES = {
    "ICD10": "ICD10CM", "ICD-10-CM": "ICD10CM", "ICD10-CM": "ICD10CM",
    "ICD9": "ICD9CM", "ICD-9-CM": "ICD9CM", "ICD9-CM": "ICD9CM",
    "ICD-10-PCS": "ICD10PCS", "ICD-9-PCS": "ICD9PCS", "ICD9PROC": "ICD9PCS",
    "RXNORM": "RXNORM", "RXCUI": "RXNORM", "MEDICATION": "DRUG",
}

# MEDS-style nested prefixes: DIAGNOSIS//ICD//10//E119, PROCEDURE//ICD//9//3893, ...
_NESTED = {
    ("DIAGNOSIS", "ICD", "10"): "ICD10CM",
    ("DIAGNOSIS", "ICD", "9"): "ICD9CM",
    ("PROCEDURE", "ICD", "10"): "ICD10PCS",
    ("PROCEDURE", "ICD", "9"): "ICD9PCS",
}

# A bare ICD-10-CM code: letter, digit, then up to five alphanumerics (dot optional).
_BARE_ICD10CM = re.compile(r"^[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?$")


def normalize_code(raw: str, bare_system: str | None = "ICD10CM") -> str:
  """Returns the canonical `SYSTEM/VALUE` form of `raw`.

  A bare code (no prefix) that looks like ICD-10-CM is read as `bare_system`; any other bare code
  becomes `OTHER/raw`. Pass `bare_system=None` to keep every bare code as `OTHER/...`.
  """
  s = raw.strip()
  if "//" in s:
    parts = s.split("//")
    key = tuple(p.upper() for p in parts[:3])
    if key in _NESTED and len(parts) >= 4:
      return _join(_NESTED[key], "//".join(parts[3:]))
    if key[0] == "LAB" and len(parts) >= 2:  # MEDS ETLs: LAB//<item>//<unit>
      return "LAB/" + "//".join(parts[1:])
    if key[0] == "MEDICATION" and len(parts) >= 2:  # the MIMIC-IV MEDS ETL's medication rows
      # A stop only ends what its start recorded (one event per start, as the paper's records):
      # MEDICATION//STOP//X is bookkeeping; MEDICATION//START//X is the drug X.
      if key[1] in ("STOP", "END"):
        return "OTHER/" + s
      rest = parts[2:] if key[1] == "START" and len(parts) >= 3 else parts[1:]
      return "DRUG/" + "//".join(rest)
    return "OTHER/" + s
  if "/" in s:
    system, value = s.split("/", 1)
    system = system.strip().upper()
    system = _SYSTEM_ALIASES.get(system, system)
    return _join(system, value)
  if bare_system is not None and _BARE_ICD10CM.match(s.upper()):
    return _join(bare_system, s)
  return "OTHER/" + s


def _join(system: str, value: str) -> str:
  value = value.strip()
  if system.startswith("ICD"):
    value = value.replace(".", "").upper()
  return f"{system}/{value}"


def code_type(code: str) -> CodeType:
  system = code.split("/", 1)[0]
  return SYSTEM_TYPES.get(system, CodeType.OTHER)


def code_types(codes: np.ndarray | list[str]) -> np.ndarray:
  """int8 array of `CodeType` for an array of canonical code strings."""
  return np.fromiter((code_type(c) for c in codes), dtype=np.int8, count=len(codes))


def family_prefixes(family: str) -> tuple[str, ...]:
  """The code prefixes (`SYSTEM/`) of a family, for messages; "other" is every prefix not listed."""
  return tuple(f"{s}/" for s, t in SYSTEM_TYPES.items() if t in FAMILIES[family])


def code_families(codes: np.ndarray | list[str]) -> np.ndarray:
  """int8 array: the index into `FAMILIES` of each canonical code string's family."""
  lut = np.zeros(max(CodeType) + 1, np.int8)
  for i, types in enumerate(FAMILIES.values()):
    lut[list(types)] = i
  return lut[code_types(codes)]


def icd10cm(value: str) -> str:
  """Canonical form of an ICD-10-CM value written without prefix, e.g. `icd10cm("D57.3")`."""
  return _join("ICD10CM", value)
