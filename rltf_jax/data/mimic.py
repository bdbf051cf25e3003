"""Reads MIMIC-IV's `hosp/` CSV tables (full release or the 100-patient demo) into `PatientEvents`.

What becomes what:
- `patients`: one patient per row, in ascending subject id. Sex from `gender` (F/M, else unknown).
  MIMIC gives only `anchor_age` in `anchor_year` (dates are shifted per patient), so the birth year
  is `anchor_year - anchor_age` and the birth day is January 1 of that year: ages are exact to
  within a year, and never too high. Patients without admissions are kept, with no events.
- `admissions`: each admission is a visit; the visit index is the admission's rank in time within
  the patient, the visit day its `admittime` date. Place of service (`place_of_service`): an
  observation, ambulatory-observation or surgical same-day admission is outpatient hospital (22,
  observation is outpatient status in CMS billing); otherwise an admission that came through the
  emergency room (`admission_location` EMERGENCY ROOM or `admission_type` EW EMER.) is 23; every
  other admission is an inpatient stay (21).
- `diagnoses_icd`: `ICD10CM/<code>` or `ICD9CM/<code>` by `icd_version`, in `seq_num` order.
  MIMIC gives diagnoses no time: they sit on the admission's day.
- `procedures_icd`: `ICD10PCS/<code>` or `ICD9PCS/<code>` on their `chartdate`.
- `prescriptions`: `DRUG/<name>` on the `starttime` date, the name upper-cased with every run of
  other characters than letters, digits and `.%+-` turned into `_` ("HYDROmorphone (Dilaudid)" ->
  `DRUG/HYDROMORPHONE_DILAUDID`). Names, not NDCs, because NDC is 0 or empty on a sixth of the
  demo's rows and one drug has many NDCs. Rows with `drug_type` BASE (the carrier solution of an IV
  mixture: saline, dextrose, "Bag") are dropped, and one drug given several times on one day of an
  admission is one event.
- Rows whose `hadm_id` matches no admission of a known patient are dropped (logged).
- An event's day is clipped into its admission's span as far as ordering needs: not before the
  admission's day, not after the next admission's day. Events are ordered by (visit, day), then
  diagnoses, procedures, prescriptions, each in its own order, so days and visit indices never
  decrease within a patient (what `PatientEvents` requires). Input rows may come in any order.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from rltf_jax.data.codes import normalize_code
from rltf_jax.data.events import SEX_FEMALE, SEX_MALE, SEX_UNKNOWN, PatientEvents
from rltf_jax.errors import DataError

log = logging.getLogger(__name__)

EVENT_TABLES = ("diagnoses_icd", "procedures_icd", "prescriptions")
POS_INPATIENT, POS_OUTPATIENT_HOSPITAL, POS_EMERGENCY_ROOM = 21, 22, 23
_OUTPATIENT_TYPES = ("OBSERVATION", "SAME DAY")  # substrings of admission_type
_TS = pa.timestamp("s")
# Columns read from each table and their types (codes as strings: ICD-9 codes have leading zeros).
_COLUMNS = {
    "patients": {"subject_id": pa.int64(), "gender": pa.string(), "anchor_age": pa.int64(),
                 "anchor_year": pa.int64()},
    "admissions": {"subject_id": pa.int64(), "hadm_id": pa.int64(), "admittime": _TS,
                   "admission_type": pa.string(), "admission_location": pa.string()},
    "diagnoses_icd": {"hadm_id": pa.int64(), "seq_num": pa.int64(), "icd_code": pa.string(),
                      "icd_version": pa.int64()},
    "procedures_icd": {"hadm_id": pa.int64(), "seq_num": pa.int64(), "chartdate": pa.date32(),
                       "icd_code": pa.string(), "icd_version": pa.int64()},
    "prescriptions": {"hadm_id": pa.int64(), "starttime": _TS, "drug_type": pa.string(),
                      "drug": pa.string()},
}
_SOURCE_RANK = {name: i for i, name in enumerate(EVENT_TABLES)}


def read_mimic(path: str | Path, *, tables: Sequence[str] = EVENT_TABLES) -> PatientEvents:
  """Reads the MIMIC-IV directory `path` (the release root holding `hosp/`, or `hosp/` itself).

  `tables` picks the event tables to read (all of `EVENT_TABLES` by default); each must exist.
  """
  unknown = [t for t in tables if t not in EVENT_TABLES]
  if unknown:
    raise DataError(f"unknown MIMIC-IV event tables {unknown}; choose from {', '.join(EVENT_TABLES)}")
  root = _hosp_dir(path)
  patients = _read_table(root, "patients")
  if len(patients) == 0:
    raise DataError(f"{_table_path(root, 'patients')}: no patients (the table has only a header)")
  subject_ids, sex, birth_day = _patients(root, patients)
  adm = _admissions(root, _read_table(root, "admissions"), subject_ids)

  parts = [_events(root, name, _read_table(root, name), adm) for name in tables]
  code_tables = [p.pop("codes") for p in parts]
  codes = np.unique(np.concatenate([np.asarray(c, str) for c in code_tables] + [np.zeros(0, str)]))
  for p, c in zip(parts, code_tables):
    p["code"] = np.searchsorted(codes, np.asarray(c, str))[p["code"]] if len(c) else p["code"]
  cat = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, np.int64)
         for k in ("adm", "day", "code", "source", "within")}
  a = cat["adm"]
  patient, visit = adm["patient"][a], adm["visit"][a]
  order = np.lexsort((cat["within"], cat["source"], cat["day"], visit, patient))
  offsets = np.zeros(len(subject_ids) + 1, np.int64)
  np.cumsum(np.bincount(patient, minlength=len(subject_ids)), out=offsets[1:])
  return PatientEvents.build(
      subject_id=subject_ids, sex=sex, birth_day=birth_day, offsets=offsets,
      code=cat["code"][order], day=cat["day"][order], visit=visit[order],
      pos=adm["pos"][a][order], codes=codes, source=str(root))


def place_of_service(admission_type: str | None, admission_location: str | None) -> int:
  """CMS place of service of a MIMIC-IV admission (see the module docstring)."""
  kind = (admission_type or "").strip().upper()
  where = (admission_location or "").strip().upper()
  if any(s in kind for s in _OUTPATIENT_TYPES):
    return POS_OUTPATIENT_HOSPITAL
  if where == "EMERGENCY ROOM" or kind == "EW EMER.":
    return POS_EMERGENCY_ROOM
  return POS_INPATIENT


def drug_code(name: str) -> str:
  """`DRUG/<normalised name>` for a prescription's `drug` (see the module docstring)."""
  return "DRUG/" + re.sub(r"[^A-Z0-9.%+\-]+", "_", name.upper()).strip("_")


def read_descriptions(path: str | Path) -> dict[str, str]:
  """Canonical ICD code -> long title from `d_icd_diagnoses` / `d_icd_procedures` (when present)."""
  root = _hosp_dir(path)
  out: dict[str, str] = {}
  for name, kind in (("d_icd_diagnoses", "CM"), ("d_icd_procedures", "PCS")):
    file = _table_path(root, name, required=False)
    if file is None:
      continue
    t = _read_csv(file, {"icd_code": pa.string(), "icd_version": pa.int64(),
                         "long_title": pa.string()})
    for code, version, title in zip(*(t.column(c).to_pylist() for c in t.column_names)):
      if code and title and version in (9, 10):
        out[normalize_code(f"ICD{version}{kind}/{code}")] = title
  return out


# ------------------------------------------------------------------------------------ tables
def _hosp_dir(path: str | Path) -> Path:
  root = Path(path)
  if (root / "hosp").is_dir():
    root = root / "hosp"
  if not root.is_dir():
    raise DataError(f"{path}: no such directory; give the MIMIC-IV root (holding hosp/) or hosp/")
  return root


def _table_path(root: Path, name: str, required: bool = True) -> Path | None:
  for suffix in (".csv.gz", ".csv"):
    if (root / (name + suffix)).is_file():
      return root / (name + suffix)
  if required:
    raise DataError(f"{root}: table {name}.csv.gz (or {name}.csv) is missing; the MIMIC-IV reader "
                    f"needs patients, admissions and {', '.join(EVENT_TABLES)}")
  return None


def _read_table(root: Path, name: str) -> pa.Table:
  return _read_csv(_table_path(root, name), _COLUMNS[name])


def _read_csv(path: Path, columns: dict[str, pa.DataType]) -> pa.Table:
  """The named columns of a CSV (optionally gzipped) with their types, or a `DataError`."""
  if path.stat().st_size == 0:
    raise DataError(f"{path}: the file is empty (0 bytes); restore it from the MIMIC-IV release")
  try:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
      header = next(csv.reader(f), None)
  except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as e:
    raise DataError(f"{path}: cannot read the CSV header ({e}); the file may be corrupt") from e
  if not header:
    raise DataError(f"{path}: the file is empty (no header line); restore it from the release")
  missing = [c for c in columns if c not in header]
  if missing:
    raise DataError(f"{path}: column {missing[0]!r} is missing (needs {', '.join(columns)}; "
                    f"found {', '.join(header)}); use the MIMIC-IV v2 table layout")
  try:
    return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
        column_types=columns, include_columns=list(columns)))
  except (pa.ArrowInvalid, OSError, EOFError) as e:
    wanted = ", ".join(f"{c} {t}" for c, t in columns.items())
    raise DataError(f"{path}: cannot parse the table ({e}); expected column types: {wanted}") from e


def _require_not_null(path: Path, table: pa.Table, names: Sequence[str]) -> None:
  for name in names:
    if table.column(name).null_count:
      raise DataError(f"{path}: column {name!r} has {table.column(name).null_count} empty values; "
                      "every row needs one")


def _patients(root: Path, t: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  path = _table_path(root, "patients")
  _require_not_null(path, t, ("subject_id", "anchor_age", "anchor_year"))
  ids = t.column("subject_id").to_numpy()
  order = np.argsort(ids, kind="stable")
  ids = ids[order]
  if np.any(ids[1:] == ids[:-1]):
    dup = ids[1:][ids[1:] == ids[:-1]][0]
    raise DataError(f"{path}: subject {dup} appears twice in column 'subject_id'")
  gender = np.asarray(t.column("gender").fill_null("").to_pylist(), str)[order]
  sex = np.where(np.char.upper(gender) == "F", SEX_FEMALE,
                 np.where(np.char.upper(gender) == "M", SEX_MALE, SEX_UNKNOWN)).astype(np.int8)
  birth_year = (t.column("anchor_year").to_numpy() - t.column("anchor_age").to_numpy())[order]
  if np.any(birth_year < 1) or np.any(birth_year > 9999):
    raise DataError(f"{path}: columns 'anchor_year' - 'anchor_age' give birth years outside 1..9999")
  birth_day = (birth_year - 1970).astype("datetime64[Y]").astype("datetime64[D]").astype(np.int64)
  return ids, sex, birth_day


def _admissions(root: Path, t: pa.Table, subject_ids: np.ndarray) -> dict[str, np.ndarray]:
  """Admissions of known patients in (patient, time) order, with visit index, day and place."""
  path = _table_path(root, "admissions")
  _require_not_null(path, t, ("subject_id", "hadm_id", "admittime"))
  subject = t.column("subject_id").to_numpy()
  hadm = t.column("hadm_id").to_numpy()
  admit_s = t.column("admittime").cast(pa.int64()).to_numpy()
  patient = np.searchsorted(subject_ids, subject)
  known = (patient < len(subject_ids)) & (subject_ids[np.minimum(patient, len(subject_ids) - 1)]
                                          == subject)
  if not known.all():
    log.warning("%s: %d admissions of subjects absent from patients are dropped",
                path, int((~known).sum()))
  kinds = t.column("admission_type").fill_null("").to_pylist()
  wheres = t.column("admission_location").fill_null("").to_pylist()
  pos = np.fromiter((place_of_service(k, w) for k, w in zip(kinds, wheres)), np.int16, len(t))
  order = np.lexsort((hadm, admit_s, patient))
  order = order[known[order]]
  patient, hadm, admit_s, pos = patient[order], hadm[order], admit_s[order], pos[order]
  if len(np.unique(hadm)) != len(hadm):
    raise DataError(f"{path}: column 'hadm_id' repeats an admission id; each row is one admission")
  first = np.ones(len(patient), bool)
  first[1:] = patient[1:] != patient[:-1]
  run_start = np.maximum.accumulate(np.where(first, np.arange(len(patient)), 0))
  visit = (np.arange(len(patient)) - run_start).astype(np.int32)
  day = np.floor_divide(admit_s, 86_400)
  last = np.ones(len(patient), bool)
  last[:-1] = patient[1:] != patient[:-1]
  next_day = np.where(last, np.iinfo(np.int32).max, np.roll(day, -1))
  by_hadm = np.argsort(hadm)
  return dict(patient=patient, hadm=hadm, visit=visit, day=day, next_day=next_day, pos=pos,
              hadm_sorted=hadm[by_hadm], hadm_order=by_hadm)


def _admission_index(path: Path, hadm: pa.ChunkedArray, adm: dict[str, np.ndarray]) -> np.ndarray:
  """Row -> admission index, -1 where the row's hadm_id is empty or unknown."""
  ids = hadm.fill_null(-1).to_numpy()
  keys = adm["hadm_sorted"]
  if len(keys) == 0:
    return np.full(len(ids), -1, np.int64)
  at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
  found = keys[at] == ids
  if not found.all():
    log.warning("%s: %d rows with an empty or unknown hadm_id are dropped", path,
                int((~found).sum()))
  return np.where(found, adm["hadm_order"][at], -1)


def _events(root: Path, name: str, t: pa.Table, adm: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """One event table as arrays: admission, day, code (into "codes"), source rank, order within."""
  path = _table_path(root, name)
  if name == "prescriptions":
    t = t.filter(pc.and_(pc.invert(pc.fill_null(pc.equal(t.column("drug_type"), "BASE"), False)),
                         pc.is_valid(t.column("drug"))))
    raw = t.column("drug")
    to_code = drug_code
    time_s = t.column("starttime").cast(pa.int64())
    day = pc.floor(pc.divide(time_s.cast(pa.float64()), 86_400.0)).cast(pa.int64())
    within = time_s.fill_null(np.iinfo(np.int64).min).to_numpy()
  else:
    _require_not_null(path, t, ("icd_code", "icd_version"))
    versions = set(pc.unique(t.column("icd_version")).to_pylist())
    if versions - {9, 10}:
      raise DataError(f"{path}: column 'icd_version' has values {sorted(versions - {9, 10})}; "
                      "MIMIC-IV uses 9 and 10 only")
    kind = "CM" if name == "diagnoses_icd" else "PCS"
    prefix = pc.if_else(pc.equal(t.column("icd_version"), 9), f"ICD9{kind}/", f"ICD10{kind}/")
    raw = pc.binary_join_element_wise(prefix, t.column("icd_code"), "")
    to_code = normalize_code
    day = t.column("chartdate").cast(pa.int32()).cast(pa.int64()) if name == "procedures_icd" \
        else pa.nulls(len(t), pa.int64())
    within = t.column("seq_num").fill_null(0).to_numpy()
  a = _admission_index(path, t.column("hadm_id"), adm)
  keep = a >= 0
  encoded = (raw.combine_chunks() if isinstance(raw, pa.ChunkedArray) else raw).dictionary_encode()
  codes, remap = np.unique(np.asarray([to_code(s) for s in encoded.dictionary.to_pylist()], str),
                           return_inverse=True)
  code = remap[encoded.indices.to_numpy(zero_copy_only=False)].astype(np.int64) \
      if len(codes) else np.zeros(len(t), np.int64)
  day = np.asarray(day.fill_null(np.iinfo(np.int64).min).to_numpy(zero_copy_only=False), np.int64)
  a, day, code, within = a[keep], day[keep], code[keep], within[keep]
  # Missing days (diagnoses, prescriptions without a start) fall on the admission day by the clip.
  day = np.clip(day, adm["day"][a], adm["next_day"][a])
  if name == "prescriptions":
    # One event per (admission, day, drug): the first in start-time order.
    order = np.lexsort((within, code, day, a))
    key = np.stack([a[order], day[order], code[order]], axis=1)
    dup = np.zeros(len(order), bool)
    dup[1:] = np.all(key[1:] == key[:-1], axis=1)
    order = order[~dup]
    a, day, code, within = a[order], day[order], code[order], within[order]
  return dict(adm=a, day=day, code=code, within=within,
              source=np.full(len(a), _SOURCE_RANK[name], np.int64), codes=codes)
