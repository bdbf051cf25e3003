"""The paper's target cohorts (its Table 4).

A patient belongs to a cohort when any of the cohort's ICD-10-CM codes occurs in their history;
"the target" of a fine-tune is that code set. The table lists 16 rows although the paper's text says
15 cohorts; all 16 are available. The AMI codes are given as corrected in `method.md` (the paper's
OCR wrote `12109` for `I2109`); older-release codes such as `T814XXA`, `E780` and `E872` are kept
as they are.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import yaml

from rltf_jax.data.codes import icd10cm, normalize_code
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
    return self.name not in CHRONIC_COHORTS and self.name not in _USER_CHRONIC


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
  if name in _USER:
    return _USER[name]
  if is_definition(name):
    raise ConfigError(f"cohort definition {name}: it is resolved against the data's codes by the "
                      "pipeline (rltf_jax.pipeline.open_context); pass it as --config.cohort")
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


# ---------------------------------------------------------------- cohorts defined by the user
# A cohort definition is a JSON or YAML file (`--config.cohort=path/to/cohort.json`):
#   {"name": "sepsis_any", "disease": "Sepsis (ICD-10 and ICD-9)", "abbrev": "Sepsis",
#    "chronic": false,
#    "codes": ["ICD10CM/A41.9", "A40*", {"regex": "^ICD9CM/038"}]}
# Each entry is an exact code (canonicalised like the data's codes: `A41.9` is `ICD10CM/A419`), a
# prefix ending in `*`, or `{"regex": ...}` (Python syntax, matched against canonical codes). The
# predicate part of an ACES task config is accepted too: `predicates: {name: {code: ...}}`, where
# `code` is a string (exact, or `//`-separated MEDS form), `{regex: ...}` or `{any: [...]}`; the
# union of all predicates' codes is the cohort. Other ACES parts (windows, trigger, value
# bounds) define a task, not a code set, and are refused by name.
# The definition is resolved once against the data's code table (`resolve_definition`); the result
# is an ordinary `Cohort`, registered under its name and its file's path.
_USER: dict[str, Cohort] = {}
_USER_CHRONIC: set[str] = set()
_DEFINITION_SUFFIXES = (".json", ".yaml", ".yml")
_ACES_PREDICATE_KEYS = {"code"}


def is_definition(spec: str) -> bool:
  """Whether a `cfg.cohort` value names a cohort definition file rather than a built-in cohort."""
  return str(spec).lower().endswith(_DEFINITION_SUFFIXES)


def read_definition(path: str) -> dict:
  """{"name", "disease", "abbrev", "chronic", "patterns": [(kind, value), ...]} from a file."""
  p = Path(path)
  if not p.is_file():
    raise ConfigError(f"cohort definition {path} does not exist")
  try:
    text = p.read_text()
    raw = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
  except (ValueError, yaml.YAMLError) as e:
    raise ConfigError(f"cohort definition {path}: cannot be parsed ({e})") from e
  if not isinstance(raw, dict):
    raise ConfigError(f"cohort definition {path}: expected a mapping at the top level")
  if "predicates" in raw:
    return _from_aces(raw, p)
  name = str(raw.get("name") or p.stem)
  entries = raw.get("codes")
  if not isinstance(entries, list) or not entries:
    raise ConfigError(f"cohort {name!r} ({path}): `codes` must be a non-empty list")
  return dict(name=name, disease=str(raw.get("disease", name)), abbrev=str(raw.get("abbrev", name)),
              chronic=bool(raw.get("chronic", False)),
              patterns=[_pattern(e, name, path) for e in entries])


def _pattern(entry, name: str, path) -> tuple[str, str]:
  if isinstance(entry, dict) and set(entry) == {"regex"}:
    try:
      re.compile(entry["regex"])
    except re.error as e:
      raise ConfigError(f"cohort {name!r} ({path}): bad regex {entry['regex']!r} ({e})") from e
    return ("regex", entry["regex"])
  if isinstance(entry, str) and entry.strip():
    s = entry.strip()
    if s.endswith("*"):
      return ("prefix", normalize_code(s[:-1]) if s[:-1] else "")
    return ("exact", normalize_code(s))
  raise ConfigError(f"cohort {name!r} ({path}): a code entry must be a code, a prefix ending in * or "
                    f"{{\"regex\": ...}}, got {entry!r}")


def _from_aces(raw: dict, path: Path) -> dict:
  refused = sorted(set(raw) - {"predicates", "description", "name"})
  if refused:
    raise ConfigError(f"{path}: an ACES config is read for its predicates' codes only; "
                      f"{', '.join(refused)} define a task, not a cohort's code set (remove them)")
  patterns = []
  for pname, pred in (raw["predicates"] or {}).items():
    if not isinstance(pred, dict) or "code" not in pred:
      raise ConfigError(f"{path}: ACES predicate {pname!r} has no `code`")
    extra = sorted(set(pred) - _ACES_PREDICATE_KEYS)
    if extra:
      raise ConfigError(f"{path}: ACES predicate {pname!r}: {', '.join(extra)} are not honoured "
                        "(only `code`: a string, {regex: ...} or {any: [...]})")
    patterns += _aces_code(pred["code"], pname, path)
  name = str(raw.get("name") or path.stem)
  return dict(name=name, disease=str(raw.get("description", name)), abbrev=name, chronic=False,
              patterns=patterns)


def _aces_code(code, pname: str, path) -> list[tuple[str, str]]:
  if isinstance(code, str):
    return [("exact", normalize_code(code))]
  if isinstance(code, dict) and set(code) == {"regex"}:
    return [_pattern(code, pname, path)]
  if isinstance(code, dict) and set(code) == {"any"} and isinstance(code["any"], list):
    return [p for c in code["any"] for p in _aces_code(c, pname, path)]
  raise ConfigError(f"{path}: ACES predicate {pname!r}: `code` must be a string, {{regex: ...}} or "
                    f"{{any: [...]}}, got {code!r}")


def resolve_definition(definition: dict, code_table, path: str = "") -> Cohort:
  """The `Cohort` a definition names in a dataset whose code table is `code_table`; registered
  (under its name and `path`). A pattern that matches no code of the data, an empty result, or a
  pattern that matches more than half of the data's codes is an error naming the pattern."""
  table = np.asarray(code_table, dtype=str)
  name = definition["name"]
  if name in COHORTS:
    raise ConfigError(f"cohort definition {path}: {name!r} is a built-in cohort's name; choose another")
  matched: set[str] = set()
  for kind, value in definition["patterns"]:
    if kind == "exact":
      hit = table[table == value]
    elif kind == "prefix":
      hit = table[np.char.startswith(table, value)]
    else:
      rx = re.compile(value)
      hit = np.array([c for c in table if rx.search(c)], dtype=str)
    shown = value if kind != "prefix" else value + "*"
    if len(hit) == 0:
      raise ConfigError(f"cohort {name!r}: {kind} {shown!r} matches no code of the data "
                        f"({len(table):,} codes)")
    if len(table) > 10 and len(hit) > len(table) / 2:
      raise ConfigError(f"cohort {name!r}: {kind} {shown!r} matches {len(hit):,} of the data's "
                        f"{len(table):,} codes; a cohort is a code set, not most of the vocabulary")
    matched.update(hit.tolist())
  cohort = Cohort(name, definition["abbrev"], definition["disease"], tuple(sorted(matched)), 0.0, False)
  register(cohort, path, chronic=definition["chronic"])
  return cohort


def register(cohort: Cohort, path: str = "", chronic: bool = False) -> None:
  """Makes a user cohort known to `get_cohort` in this process (by name, and by its file path)."""
  _USER[cohort.name] = cohort
  if path:
    _USER[str(path)] = cohort
  if chronic:
    _USER_CHRONIC.add(cohort.name)
