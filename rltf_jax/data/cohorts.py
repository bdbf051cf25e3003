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
from rltf_jax.names import check_name


@dataclasses.dataclass(frozen=True)
class Cohort:
  name: str                 # config key, e.g. "scd"; a directory name (`names.check_name`)
  abbrev: str               # the paper's abbreviation, e.g. "SCD"
  disease: str
  codes: tuple[str, ...]    # canonical codes, e.g. ("ICD10CM/D573",)
  paper_frequency_percent: float
  rare_in_paper: bool
  chronic: bool = False     # the record mostly carries the condition from its start

  @property
  def acute(self) -> bool:
    """An acute condition (episodes that begin during a record), as opposed to a chronic one that a
    record mostly carries from its start: for acute cohorts the new-onset stratum is the claim."""
    return not self.chronic


def cohort_key(cohort: Cohort) -> dict:
  """The fields that identify a cohort's evaluation (`runs.digest` of it keys finished runs): every
  field but `chronic`, which was kept outside the dataclass before it became a field, so finished
  runs stay valid."""
  return {k: v for k, v in dataclasses.asdict(cohort).items() if k != "chronic"}


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
    if any(kind != "exact" for kind, _, _ in patterns):
      raise ConfigError(f"{path}: cohort {e['name']!r}: a built-in cohort lists exact codes only")
    cohorts[e["name"]] = Cohort(check_name(e["name"], "cohort name"), e["abbrev"], e["disease"],
                                tuple(v for _, v, _ in patterns), float(e["paper_frequency_percent"]),
                                bool(e["rare_in_paper"]), bool(e["chronic"]))
    if e["chronic"]:
      chronic.append(e["name"])
  return cohorts, tuple(chronic)


def get_cohort(name: str) -> Cohort:
  """Looks a built-in cohort up by config key ("scd") or the paper's abbreviation ("SCD", "GI Hem.").
  A user's cohort is a `Cohort` its caller holds (`resolve`), never looked up by name."""
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
# A cohort definition is a file (`--config.cohort=path`), in one of two forms.
#
# 1. A code list (JSON or YAML):
#   {"name": "sepsis_any", "disease": "Sepsis (ICD-10 and ICD-9)", "abbrev": "Sepsis",
#    "chronic": false, "codes": ["A41.9", "DIAGNOSIS//ICD//10//A40*", {"regex": "^ICD9CM/038"}]}
#   Each entry is an exact code, a prefix ending in `*`, or `{"regex": ...}` (Python syntax). An
#   entry matches a code of the data when it matches the source's own spelling of it
#   (`source_codes.py`: `DIAGNOSIS//ICD//9//0389`) or the canonical one (`ICD9CM/0389`; exact codes
#   and prefixes are canonicalised first, so `A41.9` is `ICD10CM/A419`).
#   `"map_icd9": true` also matches the ICD-9-CM codes of the data that the CMS GEMs map to any
#   ICD-10-CM code the definition denotes: the codes of the data it matches and every code of the
#   GEM's ICD-10-CM release its entries match (`A41*` denotes A4101 ... A419 whether or not the data
#   has them), so a patient coded in ICD-9-CM only is found. A string names a CMS GEM text file
#   instead (relative to the definition's folder; `gem.py`).
#
# 2. An ACES predicates file (YAML with `predicates:`, optionally `patient_demographics:`), read and
#   evaluated by the `es-aces` library, so every ACES feature means what ACES says: a `code` string
#   is one exact code, `{regex: ...}` a regular expression, `{any: [...]}` a list of exact codes (a
#   `*` there is a literal character), `value_min`/`value_max` bound `numeric_value`, and `expr:
#   or(a, b)` / `and(a, b)` derive predicates. Codes are the source's own strings. The cohort is the
#   predicate named in `metadata: {predicate: NAME}` (ACES ignores `metadata`), else the one
#   predicate no other predicate uses. Its patients are those with a row where ACES finds the
#   predicate true (`aces_members`; the pipeline's cohort labels). The code set the models generate
#   and the evaluation counts is every event code of the data that a plain predicate under the
#   cohort's predicate matches (value bounds and `and` narrow the labels, not the code set); the
#   pipeline reports where the two disagree. `metadata` may also give `name`, `disease`, `abbrev`
#   and `chronic`. A full task config (`trigger`, `windows`, one window with `label:`) is accepted
#   too: its label predicate gives the code set, and its labels are those ACES extracts
#   (`aces_task_labels`: one row per trigger; a patient is a member when any label is true).
#
# The definition is resolved against the dataset (`resolve`); the result is an ordinary `Cohort`
# that its caller passes on (there is no registry of user cohorts).
_DEFINITION_SUFFIXES = (".json", ".yaml", ".yml")
_ACES_TOP_KEYS = {"predicates", "patient_demographics", "description", "metadata"}


def is_definition(spec: str) -> bool:
  """Whether a `cfg.cohort` value names a cohort definition file rather than a built-in cohort."""
  return str(spec).lower().endswith(_DEFINITION_SUFFIXES)


def read_definition(path: str) -> dict:
  """The definition in a file: {"kind": "codes" | "aces", "name", "disease", "abbrev", "chronic",
  "map_icd9", ...}: "patterns" [(kind, canonical value, as written)] for a code list; "predicate"
  and "predicates" (the ACES file's mappings) for ACES. Checked (names, regexes, the ACES parse)
  before any work."""
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
  name = check_name(raw.get("name") or p.stem, f"cohort name (in {path})")
  entries = raw.get("codes")
  if not isinstance(entries, list) or not entries:
    raise ConfigError(f"cohort {name!r} ({path}): `codes` must be a non-empty list")
  return dict(kind="codes", name=name, disease=str(raw.get("disease", name)),
              abbrev=str(raw.get("abbrev", name)), chronic=bool(raw.get("chronic", False)),
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


def _pattern(entry, name: str, path) -> tuple[str, str, str]:
  """(kind, canonical value, as written) of one entry of a code list."""
  if isinstance(entry, dict) and set(entry) == {"regex"}:
    try:
      re.compile(entry["regex"])
    except (re.error, TypeError) as e:
      raise ConfigError(f"cohort {name!r} ({path}): bad regex {entry['regex']!r} ({e})") from e
    return ("regex", entry["regex"], entry["regex"])
  if isinstance(entry, str) and entry.strip():
    s = entry.strip()
    if s.endswith("*"):
      return ("prefix", normalize_code(s[:-1]) if s[:-1] else "", s[:-1])
    return ("exact", normalize_code(s), s)
  raise ConfigError(f"cohort {name!r} ({path}): a code entry must be a code, a prefix ending in * or "
                    f"{{\"regex\": ...}}, got {entry!r}")


def _from_aces(raw: dict, path: Path) -> dict:
  task = _aces_task(raw, path)
  unknown = sorted(set(raw) - _ACES_TOP_KEYS - ({"trigger", "windows"} if task else set()))
  if unknown:
    raise ConfigError(f"{path}: {', '.join(unknown)} are not ACES predicates-file keys (put this "
                      "project's settings under metadata:, which ACES ignores)")
  meta = raw.get("metadata") or {}
  if not isinstance(meta, dict):
    raise ConfigError(f"{path}: metadata must be a mapping")
  predicates = raw.get("predicates") or {}
  if not isinstance(predicates, dict) or not predicates:
    raise ConfigError(f"{path}: `predicates` must be a non-empty mapping of ACES predicates")
  demographics = raw.get("patient_demographics") or {}
  target = task["label"] if task else _cohort_predicate(meta, predicates, path)
  definition = dict(kind="aces", name=check_name(meta.get("name") or path.stem, f"cohort name (in {path})"),
                    predicate=target, predicates=predicates, demographics=demographics, path=str(path),
                    task=task)
  name = definition["name"]
  definition.update(disease=str(meta.get("disease") or raw.get("description") or name),
                    abbrev=str(meta.get("abbrev", name)), chronic=bool(meta.get("chronic", False)),
                    map_icd9=False)
  aces_config(definition)  # the library's own checks (formats, references, cycles) before any work
  return definition


def _aces_task(raw: dict, path: Path) -> dict | None:
  """A task config's trigger, windows and label predicate (None for a predicates file). Its label
  window's predicate is the cohort's code set; its labels are what ACES extracts."""
  keys = {"trigger", "windows"} & set(raw)
  if not keys:
    return None
  if keys != {"trigger", "windows"} or not isinstance(raw["windows"], dict):
    raise ConfigError(f"{path}: an ACES task config needs both `trigger` and `windows` (a mapping)")
  labels = [w["label"] for w in raw["windows"].values() if isinstance(w, dict) and w.get("label")]
  if len(labels) != 1:
    raise ConfigError(f"{path}: an ACES task config defines a cohort through its one label window "
                      f"(`label: PREDICATE`); found {len(labels)}")
  return dict(trigger=raw["trigger"], windows=raw["windows"], label=str(labels[0]))


def _cohort_predicate(meta: dict, predicates: dict, path: Path) -> str:
  if meta.get("predicate") is not None:
    target = str(meta["predicate"])
    if target not in predicates:
      raise ConfigError(f"{path}: metadata.predicate {target!r} is not one of the predicates "
                        f"({', '.join(predicates)})")
    return target
  used = set()
  for pred in predicates.values():
    if isinstance(pred, dict) and isinstance(pred.get("expr"), str):
      inner = pred["expr"].strip()
      inner = inner[inner.find("(") + 1:inner.rfind(")")]
      used.update(x.strip() for x in inner.split(","))
  sinks = [n for n in predicates if n not in used]
  if len(sinks) != 1:
    raise ConfigError(f"{path}: {len(sinks)} predicates could be the cohort ({', '.join(sinks)}); "
                      "name one with metadata: {predicate: NAME}")
  return sinks[0]


def aces_config(definition: dict):
  """The `aces.config.TaskExtractorConfig` of an ACES cohort definition: the library parses it as
  it would its own (a predicates file with the cohort's predicate as trigger and no windows; a
  task config as written), so a malformed predicate or window fails with ACES's own reason, as a
  `ConfigError`."""
  import tempfile
  from aces.config import TaskExtractorConfig  # heavy (polars, hydra): imported when used
  task = definition.get("task")
  doc = dict(predicates=definition["predicates"], trigger=task["trigger"] if task else definition["predicate"],
             windows=task["windows"] if task else {})
  if definition["demographics"]:
    doc["patient_demographics"] = definition["demographics"]
  with tempfile.TemporaryDirectory() as tmp:
    task = Path(tmp) / "cohort_task.yaml"
    task.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
      return TaskExtractorConfig.load(task)
    except (ValueError, KeyError, TypeError) as e:
      reason = str(e.args[0] if e.args else e).replace("\n", " ")
      raise ConfigError(f"{definition['path']}: es-aces refuses the predicates: {reason}") from e


def _plain_under(config, target: str) -> dict:
  """The plain predicates the cohort's predicate depends on (itself, when plain), by name."""
  stack, seen, plain = [target], set(), {}
  while stack:
    name = stack.pop()
    if name in seen:
      continue
    seen.add(name)
    pred = config.predicates[name]
    if pred.is_plain:
      plain[name] = pred
    else:
      stack.extend(pred.input_predicates)
  return plain


def _aces_matches(pred, raws: list[str]) -> list[str]:
  """The strings of `raws` whose code part a plain ACES predicate matches (by ACES's own
  expression, value bounds aside: the code set is about codes)."""
  import polars as pl
  from aces.config import PlainPredicateConfig
  if not raws:
    return []
  hit = pl.DataFrame({"code": raws}).select(PlainPredicateConfig(code=pred.code).MEDS_eval_expr())
  return [r for r, h in zip(raws, hit.to_series().to_list()) if h]


def resolve(definition: dict, code_table, source=None, path: str = "") -> tuple[Cohort, tuple[str, ...]]:
  """The `Cohort` a definition names in a dataset whose codes are `code_table` (canonical), with
  the codes only the ICD-9-CM GEM mapping added (empty without `map_icd9`). `source` is the
  dataset's `SourceCodes` (None: the source spelled codes canonically). A pattern that matches no
  code is an error naming the codes nearest to it, in the form it was written; so is a pattern that
  matches more than half of the data's codes."""
  from rltf_jax.data.source_codes import SourceCodes
  table = np.asarray(code_table, dtype=str)
  in_table = set(table.tolist())
  source = source if source is not None else SourceCodes.identity(table.tolist())
  pairs = [(raw, code) for code, raws in source.spellings.items() if code in in_table for raw in raws]
  pairs += [(code, code) for code in table.tolist() if code not in source.spellings]
  name = definition["name"]
  if name in COHORTS:
    raise ConfigError(f"cohort definition {path}: {name!r} is a built-in cohort's name; choose another")
  matched: set[str] = set()
  for shown, literal, hits in _pattern_hits(definition, pairs, source):
    if not hits and definition.get("map_icd9"):
      # An ICD-10-CM pattern the data lacks still counts when its GEM sources are in the data.
      one = [p for p in definition["patterns"] if p[2] == literal]
      if _icd9_by_gem(definition, set(), table, one, required=False):
        continue  # its codes join below, as mapped ones
    if not hits:
      raise ConfigError(f"cohort {name!r}: {shown} matches no code of the data ({len(table):,} "
                        f"codes){_nearest(literal, pairs)}")
    if len(table) > 10 and len(hits) > len(table) / 2:
      raise ConfigError(f"cohort {name!r}: {shown} matches {len(hits):,} of the data's "
                        f"{len(table):,} codes; a cohort is a code set, not most of the vocabulary")
    matched |= hits
  mapped: set[str] = set()
  if definition.get("map_icd9"):
    mapped = _icd9_by_gem(definition, matched, table) - matched
  cohort = Cohort(name, definition["abbrev"], definition["disease"], tuple(sorted(matched | mapped)),
                  0.0, False, bool(definition["chronic"]))
  return cohort, tuple(sorted(mapped))


def _pattern_hits(definition: dict, pairs: list[tuple[str, str]], source):
  """(the pattern as shown in messages, its literal text, the canonical codes of the data it
  matches), per pattern."""
  if definition["kind"] == "aces":
    yield from _aces_hits(definition, pairs, source)
    return
  for kind, value, written in definition["patterns"]:
    if kind == "exact":
      hits = {c for raw, c in pairs if c == value or raw == written}
    elif kind == "prefix":
      hits = {c for raw, c in pairs if c.startswith(value) or (written and raw.startswith(written))}
    else:
      rx = re.compile(value)
      hits = {c for raw, c in pairs if rx.search(c) or rx.search(raw)}
    yield f"{kind} {written + '*' if kind == 'prefix' else written!r}", written, hits


def _aces_hits(definition: dict, pairs: list[tuple[str, str]], source):
  config = aces_config(definition)
  raws = [raw for raw, _ in pairs]
  internal = dict(pairs)
  for pname, pred in sorted(_plain_under(config, definition["predicate"]).items()):
    if pred.static:
      continue
    hit = _aces_matches(pred, raws)
    if not hit and _aces_matches(pred, list(source.other)):
      continue  # a non-event code (a death or admission row): it labels, it is no target code
    code = pred.code
    if isinstance(code, dict) and "any" in code:
      for entry in code["any"]:  # ACES reads `any` entries as exact codes: a `*` is a literal
        if "*" in str(entry) and not _aces_matches(type(pred)(code=str(entry)), raws):
          raise ConfigError(f"cohort {definition['name']!r}: ACES predicate {pname!r}: `any` entry "
                            f"{entry!r} is an exact code (ACES has no wildcards in `any`) and "
                            f"matches no code of the data; write {{regex: ...}} for a pattern"
                            f"{_nearest(str(entry), pairs)}")
    literal = code if isinstance(code, str) else code.get("regex") or " ".join(map(str, code.get("any", [])))
    yield f"ACES predicate {pname!r} (code {code!r})", str(literal), {internal[r] for r in hit}


def _nearest(literal: str, pairs: list[tuple[str, str]], n: int = 5) -> str:
  """'; nearest codes: ...' in the spelling `literal` was written in: canonical when it reads as
  `SYSTEM/VALUE` (one slash first), else the source's own strings. Nearest: the codes sharing the
  longest prefix with the pattern's literal head, else by string similarity."""
  import difflib
  body = literal.lstrip("^")
  canonical = re.match(r"^[A-Za-z0-9_-]+/[^/]", body) is not None
  candidates = sorted({c if canonical else raw for raw, c in pairs})
  head = re.split(r"[$()\[\]{}*+?|\\]", body)[0]
  for k in range(len(head), 2, -1):
    close = [c for c in candidates if c.startswith(head[:k])]
    if close:
      return f"; nearest codes: {', '.join(close[:n])}"
  close = difflib.get_close_matches(re.sub(r"[\^$()\[\]{}*+?|\\]", "", body), candidates, n=n, cutoff=0.0)
  return f"; nearest codes: {', '.join(close)}" if close else ""


def _icd9_by_gem(definition: dict, matched: set[str], table: np.ndarray, patterns=None,
                 required: bool = True) -> set[str]:
  """The ICD-9-CM codes of the data whose GEM targets include an ICD-10-CM code the definition
  (or only `patterns` of it) denotes: the data's matched ICD-10-CM codes and every GEM target its
  entries match."""
  gem_path = definition["map_icd9"] if isinstance(definition["map_icd9"], str) else ""
  targets = {f"ICD10CM/{v}" for v in gem.forward_gem(gem_path)}
  denoted = {c for c in matched if c.startswith("ICD10CM/")}
  for kind, value, _ in definition["patterns"] if patterns is None else patterns:
    if kind == "exact":
      denoted |= {value} & targets
    elif kind == "prefix":
      denoted |= {t for t in targets if t.startswith(value)} if value.startswith("ICD10CM/") else set()
    else:
      rx = re.compile(value)
      denoted |= {t for t in targets if rx.search(t)}
  if not denoted and required:
    raise ConfigError(f"cohort {definition['name']!r}: map_icd9 maps ICD-10-CM codes, and the "
                      "definition resolves to none")
  icd10 = [c.split("/", 1)[1] for c in denoted]
  in_data = set(table[np.char.startswith(table, "ICD9CM/")].tolist())
  return {f"ICD9CM/{v}" for v in gem.icd9_sources(icd10, gem_path)} & in_data


def resolve_definition(definition: dict, code_table, path: str = "", source=None) -> Cohort:
  """`resolve`'s cohort alone."""
  return resolve(definition, code_table, source, path)[0]


def aces_task_labels(definition: dict, meds_path: str | Path, subject_ids):
  """An ACES task config's labels, extracted by es-aces (`aces.query.query`) shard by shard over
  the MEDS directory, for the subjects `subject_ids`: a MEDS label table (subject_id,
  prediction_time = ACES's index timestamp, boolean_value = label > 0)."""
  import polars as pl
  import pyarrow as pa
  from aces import query
  from aces.predicates import get_predicates_df
  from omegaconf import DictConfig
  config = aces_config(definition)
  parts = []
  for shard in sorted(p for p in (Path(meds_path) / "data").rglob("*.parquet") if p.is_file()):
    found = query.query(config, get_predicates_df(config, DictConfig(dict(standard="meds", path=str(shard)))))
    if found is not None and len(found):
      parts.append(found.select("subject_id", "index_timestamp", "label"))
  ids = np.asarray(subject_ids, np.int64)
  table = pl.concat(parts) if parts else pl.DataFrame(
      {"subject_id": [], "index_timestamp": [], "label": []},
      schema={"subject_id": pl.Int64, "index_timestamp": pl.Datetime("us"), "label": pl.Int64})
  table = table.filter(pl.col("subject_id").is_in(ids.tolist())).sort("subject_id", "index_timestamp")
  return pa.table({"subject_id": pa.array(table["subject_id"].to_list(), pa.int64()),
                   "prediction_time": pa.array(table["index_timestamp"].to_list(), pa.timestamp("us")),
                   "boolean_value": pa.array((table["label"] > 0).to_list(), pa.bool_())})


def aces_members(definition: dict, meds_path: str | Path, subject_ids) -> np.ndarray:
  """bool [len(subject_ids)]: whether es-aces finds the ACES cohort's predicate true on any row of
  each subject in the MEDS directory (one shard at a time); for a task config, whether any of the
  subject's extracted labels is true."""
  if definition.get("task"):
    labels = aces_task_labels(definition, meds_path, subject_ids)
    positive = np.asarray(labels.column("subject_id").to_numpy(zero_copy_only=False))[
        np.asarray(labels.column("boolean_value").to_numpy(zero_copy_only=False), bool)]
    return np.isin(np.asarray(subject_ids, np.int64), positive)
  import polars as pl
  from aces.predicates import get_predicates_df
  from omegaconf import DictConfig
  config = aces_config(definition)
  target = definition["predicate"]
  positive: set[int] = set()
  for shard in sorted(p for p in (Path(meds_path) / "data").rglob("*.parquet") if p.is_file()):
    df = get_predicates_df(config, DictConfig(dict(standard="meds", path=str(shard))))
    positive.update(df.filter(pl.col(target) > 0)["subject_id"].unique().to_list())
  ids = np.asarray(subject_ids, np.int64)
  return np.isin(ids, np.fromiter(positive, np.int64, len(positive)))


# Chronic cohorts (the simulator's story treats the same ones as chronic; a test checks). Loaded
# last: the file is read with the user-definition parser above.
COHORTS, CHRONIC_COHORTS = _load_table4(TABLE4_PATH)
