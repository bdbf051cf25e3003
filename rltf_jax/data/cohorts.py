"""The paper's target cohorts (its Table 4), and cohorts defined by the user.

A patient belongs to a cohort when any of the cohort's ICD-10-CM codes occurs in their history;
"the target" of a fine-tune is that code set. The Table-4 cohorts live in `table4_cohorts.json`,
in the same definition format a user writes (plus the paper's prevalence and rare flag). The table
lists 16 rows although the paper's text says 15 cohorts; all 16 are available. The AMI codes are
given as corrected in `method.md` (the paper's OCR wrote `12109` for `I2109`); older-release codes
such as `T814XXA`, `E780` and `E872` are kept as they are.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import yaml

from rltf_jax.data import gem
from rltf_jax.data.codes import normalize_code
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


TABLE4_PATH = Path(__file__).with_name("table4_cohorts.json")


def _load_table4(path: Path) -> tuple[dict[str, Cohort], tuple[str, ...]]:
  """The cohorts of `table4_cohorts.json` (user-definition format, exact codes only, plus the
  paper's `paper_frequency_percent` and `rare_in_paper`) and the names of the chronic ones."""
  try:
    entries = json.loads(path.read_text())["cohorts"]
  except (OSError, ValueError, KeyError) as e:
    raise ConfigError(f"{path}: cannot read the Table-4 cohorts ({e}); restore it from the repository") from e
  cohorts, chronic = {}, []
  for e in entries:
    patterns = [_pattern(c, e["name"], path) for c in e["codes"]]
    if any(kind != "exact" for kind, _ in patterns):
      raise ConfigError(f"{path}: cohort {e['name']!r}: a built-in cohort lists exact codes only")
    cohorts[e["name"]] = Cohort(e["name"], e["abbrev"], e["disease"], tuple(v for _, v in patterns),
                                float(e["paper_frequency_percent"]), bool(e["rare_in_paper"]))
    if e["chronic"]:
      chronic.append(e["name"])
  return cohorts, tuple(chronic)


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
# `"map_icd9": true` also matches the ICD-9-CM codes that the CMS GEMs map to the resolved
# ICD-10-CM codes (`gem.py`; a string names a CMS GEM text file instead, relative to the
# definition's folder).
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
              patterns=[_pattern(e, name, path) for e in entries],
              map_icd9=_map_icd9(raw.get("map_icd9", False), name, p))


def _map_icd9(value, name: str, path: Path) -> str | bool:
  """False, True (the packaged GEM) or the path of a CMS GEM file (relative to the definition)."""
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip():
    gem_path = Path(value.strip())
    return str(gem_path if gem_path.is_absolute() else path.parent / gem_path)
  raise ConfigError(f"cohort {name!r} ({path}): map_icd9 must be true, false or the path of a CMS "
                    f"ICD-9-CM -> ICD-10-CM GEM file, got {value!r}")


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
              patterns=patterns, map_icd9=False)


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
  return resolve_with_mapping(definition, code_table, path)[0]


def resolve_with_mapping(definition: dict, code_table, path: str = "") -> tuple[Cohort, tuple[str, ...]]:
  """As `resolve_definition`, with the codes of the data that only the ICD-9-CM GEM mapping added
  (empty unless the definition has `map_icd9`)."""
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
  mapped: set[str] = set()
  if definition.get("map_icd9"):
    icd10 = [c.split("/", 1)[1] for c in matched if c.startswith("ICD10CM/")]
    if not icd10:
      raise ConfigError(f"cohort {name!r}: map_icd9 maps ICD-10-CM codes, and the definition "
                        "resolves to none")
    gem_path = definition["map_icd9"] if isinstance(definition["map_icd9"], str) else ""
    in_data = set(table[np.char.startswith(table, "ICD9CM/")].tolist())
    mapped = ({f"ICD9CM/{v}" for v in gem.icd9_sources(icd10, gem_path)} & in_data) - matched
  cohort = Cohort(name, definition["abbrev"], definition["disease"], tuple(sorted(matched | mapped)),
                  0.0, False)
  register(cohort, path, chronic=definition["chronic"])
  return cohort, tuple(sorted(mapped))


def register(cohort: Cohort, path: str = "", chronic: bool = False) -> None:
  """Makes a user cohort known to `get_cohort` in this process (by name, and by its file path)."""
  _USER[cohort.name] = cohort
  if path:
    _USER[str(path)] = cohort
  if chronic:
    _USER_CHRONIC.add(cohort.name)


# Chronic cohorts (the simulator's story treats the same ones as chronic; a test checks). Loaded
# last: the file is read with the user-definition parser above.
COHORTS, CHRONIC_COHORTS = _load_table4(TABLE4_PATH)
