"""Reads and writes datasets in the Medical Event Data Standard (MEDS).

Layout (MEDS schema 0.3):

  data/**/*.parquet              subject_id int64, time timestamp[us] (null for static rows),
                                 code string, numeric_value float32 (nullable)
  metadata/codes.parquet         code, description (nullable), parent_codes (nullable)
  metadata/subject_splits.parquet  subject_id, split in {"train", "tuning", "held_out"}
  metadata/dataset.json          dataset_name, etl_name, meds_version, created_at, ...

How rows become `PatientEvents` (`read_meds`):
- Rows are sorted by subject, then time (stable, so rows with equal times keep their file order);
  unsorted shards are therefore accepted. Patients come out in ascending subject id.
- `MEDS_BIRTH` gives the birth day (its time, floored to the day). A sex code (`GENDER//F`,
  `GENDER//M`, `SEX//F`, `GENDER//FEMALE`, ...; one or two slashes) gives the sex; any other value
  leaves it unknown. Neither becomes an event.
- Subjects without `MEDS_BIRTH` have no age, which every stage needs: they are dropped with a
  logged warning (`missing_birth="drop"`, the default) or refused (`missing_birth="error"`).
- `MEDS_DEATH` and the visit bookkeeping codes of MEDS ETLs (`HOSPITAL_ADMISSION//...`,
  `HOSPITAL_DISCHARGE//...`, `ED_REGISTRATION`, `ED_OUT`, `TRANSFER_TO//...`, ...; see
  `META_CODE_PREFIXES`) are dropped: they describe the stay, not a medical code. Every other row
  with a time is an event, its code normalised by `codes.normalize_code` (so `ICD10CM/E11.9`,
  `DIAGNOSIS//ICD//10//E119` and, with `bare_code_system="ICD10CM"`, `E119` are one code; codes
  of unknown systems become `OTHER/...`). Other static rows (null time) are dropped.
  `read_meds` keeps no `numeric_value`; `read_meds_values` returns it per event (NaN where null)
  for the value tokens of `values.py`. Which code families become events is `families.py`'s job
  (`data.include`), applied by `load.load_dataset` after reading.
- Visits and place of service: when the shards carry the extra columns `visit` (0-based visit index
  within the subject) and `place_of_service` (CMS code), as `write_meds` writes them, they are used.
  Otherwise a visit is a distinct event day of the subject (visit index = rank of the day) and the
  place of service is 0 (unknown).
- `metadata/subject_splits.parquet`, when present, gives the splits (train -> 0, tuning -> 1,
  held_out -> 2; "valid"/"validation"/"test" are accepted too). A subject missing from it is an
  error, since guessing would silently move patients between training and evaluation.

`write_meds` writes the same layout (with the `visit` and `place_of_service` columns), so
`read_meds(write_meds(ds))` equals `ds` whenever `ds` lists its patients in ascending subject id.

Command line: `python -m rltf_jax.data.meds --convert-mimic MIMIC_DIR --out MEDS_DIR` converts the
MIMIC-IV CSV tables (see `mimic.py`) to MEDS, atomically.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import re
import tempfile
from pathlib import Path
from typing import Mapping

import meds as meds_schema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import rltf_jax
from rltf_jax import io
from rltf_jax.data.codes import normalize_code
from rltf_jax.data import mimic
from rltf_jax.data.events import (DAYS_PER_YEAR, SEX_FEMALE, SEX_MALE, SEX_UNKNOWN, PatientEvents,
                                  gather_ranges)
from rltf_jax.errors import DataError, cli_main

log = logging.getLogger(__name__)

MEDS_VERSION = meds_schema.__version__  # what write_meds validates against
BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"
SEX_CODES = {SEX_FEMALE: "GENDER//F", SEX_MALE: "GENDER//M"}
SPLIT_NAMES = ("train", "tuning", "held_out")  # our split 0, 1, 2
_SPLIT_ALIASES = {"train": 0, "tuning": 1, "valid": 1, "validation": 1, "held_out": 2, "test": 2}
# Codes that record the stay rather than a medical code (MEDS ETLs for MIMIC-IV, eICU, OMOP).
META_CODE_PREFIXES = (DEATH_CODE, "HOSPITAL_ADMISSION", "HOSPITAL_DISCHARGE", "ED_REGISTRATION",
                      "ED_OUT", "TRANSFER_TO", "ICU_ADMISSION", "ICU_DISCHARGE", "VISIT//",
                      "ADMISSION//", "DISCHARGE//")
_SEX_RE = re.compile(r"^(GENDER|SEX)/{1,2}(F|FEMALE|M|MALE)$", re.IGNORECASE)
_US_PER_DAY = 86_400 * 1_000_000
# The longest code accepted: real codes are a few dozen characters, and every stored code string
# takes the longest one's width (one 10,000-character code made a 368 MB code array).
MAX_CODE_LENGTH = 256

# Columns a shard must have, with the Arrow type family each must belong to.
_REQUIRED = {
    "subject_id": ("an integer (int64)", pa.types.is_integer),
    "time": ("a timestamp (timestamp[us])",
             lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_null(t)),
    "code": ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)
             or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))),
}
_OPTIONAL = {
    "visit": ("an integer", pa.types.is_integer),
    "place_of_service": ("an integer", pa.types.is_integer),
}

# Row kinds after looking at the code.
_EVENT, _BIRTH, _FEMALE, _MALE, _SKIP = 0, 1, 2, 3, 4


# ------------------------------------------------------------------------------------ reading
def read_meds(path: str | Path, bare_code_system: str | None = "ICD10CM", *,
              missing_birth: str = "drop") -> tuple[PatientEvents, bool]:
  """Reads a MEDS directory; returns the dataset and whether it carried subject splits.

  Args:
    path: the MEDS root (holding `data/` and usually `metadata/`).
    bare_code_system: how prefix-less ICD-10-CM-looking codes are read (see `normalize_code`).
    missing_birth: "drop" (default; logged) or "error" for subjects without `MEDS_BIRTH`.
  """
  ds, has_splits, _ = read_meds_values(path, bare_code_system, missing_birth=missing_birth)
  return ds, has_splits


def read_meds_values(path: str | Path, bare_code_system: str | None = "ICD10CM", *,
                     missing_birth: str = "drop", scratch_dir: str | Path | None = None
                     ) -> tuple[PatientEvents, bool, np.ndarray]:
  """As `read_meds`, with float64 [E]: each event's `numeric_value` (NaN where null or absent).

  Memory stays bounded by the largest shard, not the dataset: a first pass streams the `code` and
  `subject_id` columns to build the vocabulary (each distinct raw code classified once); a second
  encodes one shard at a time (a group of shards when subjects are split across shards) into flat
  event files in a scratch directory (`scratch_dir`, default the system's temporary directory);
  a merge writes them in subject order, a bounded chunk at a time. The returned event arrays
  (and the values) are memory-mapped from those files, copy-on-write; the files are unlinked
  before returning, so nothing stays on disk once the arrays are freed.
  """
  if missing_birth not in ("drop", "error"):
    raise DataError(f"missing_birth must be 'drop' or 'error', got {missing_birth!r}")
  root = Path(path)
  data_dir = root / "data"
  source = str(data_dir)
  shards = _list_shards(root, data_dir)
  use_visit, use_pos = _optional_columns(shards)
  scan = _scan(shards)
  if scan.rows == 0:
    raise DataError(f"{data_dir}: the shards hold no rows; the dataset is empty")
  vocab = _vocabulary(scan.raw_codes, bare_code_system)
  with tempfile.TemporaryDirectory(prefix="rltf-meds-", dir=scratch_dir) as tmp:
    parts = [_encode_group([shards[i] for i in group], vocab, use_visit, use_pos, source,
                           Path(tmp) / f"group{k}")
             for k, group in enumerate(_shard_groups(scan.subjects))]
    empty_rows = sum(p.empty_rows for p in parts)
    if empty_rows:  # an empty or whitespace code carries nothing: dropped, with a count
      log.warning("%s: %d rows with an empty or whitespace code are dropped", data_dir, empty_rows)
    _check_births(source, parts, missing_birth)
    patients, events = _merge(parts, Path(tmp))
  subject_ids = patients["subject_id"]
  split, has_splits = _read_splits(root, subject_ids)
  # Each slice was validated when it was encoded, and the merge keeps subjects whole and unique.
  ds = PatientEvents.build(codes=vocab.codes, split=split, source=source, checked=True,
                           **patients, **{k: v for k, v in events.items() if k != "value"})
  return ds, has_splits, events["value"]


# Rows the vocabulary pass reads at once, rows of a sorted shard encoded at once, and events one
# merge step moves.
_SCAN_BATCH_ROWS = 1 << 20
_SLICE_ROWS = 1 << 20
_MERGE_EVENTS = 1 << 20
# The encoded event columns, in the dtypes `PatientEvents` keeps (value: the numeric_value).
_EVENT_COLUMNS = {"code": np.int32, "day": np.int32, "visit": np.int32, "pos": np.int16,
                  "value": np.float64}


@dataclasses.dataclass
class _Scan:
  """What the first pass over the shards found."""
  raw_codes: list[str]            # every distinct raw code string, in order of first sight
  subjects: list[np.ndarray]      # per shard: its distinct subject ids, sorted
  rows: int


@dataclasses.dataclass
class _Vocab:
  """Per distinct raw code (indexed as `lookup` gives): its row kind and event-code index."""
  lookup: dict[str, int]
  kinds: np.ndarray        # int8 [R]: _EVENT, _BIRTH, _FEMALE, _MALE or _SKIP
  canon_index: np.ndarray  # int32 [R]: index into `codes` (events only)
  empty: np.ndarray        # bool [R]: an empty or whitespace code
  codes: np.ndarray        # str [C]: the canonical event codes, sorted


@dataclasses.dataclass
class _Part:
  """One encoded shard group: its patients (sorted by subject id, subjects without a birth row
  already removed) in memory, its events in flat files `<prefix>.<column>`."""
  subject_id: np.ndarray
  sex: np.ndarray
  birth_day: np.ndarray
  offsets: np.ndarray
  missing_birth: np.ndarray  # subject ids without a MEDS_BIRTH row
  empty_rows: int
  prefix: Path


def _list_shards(root: Path, data_dir: Path) -> list[Path]:
  if not data_dir.is_dir():
    raise DataError(f"{root}: not a MEDS directory (no data/ folder); point data.path at the "
                    "MEDS root that holds data/ and metadata/")
  shards = sorted(p for p in data_dir.rglob("*.parquet") if p.is_file())
  if not shards:
    raise DataError(f"{data_dir}: no .parquet shards found; a MEDS dataset keeps its events "
                    "in data/*.parquet")
  return shards


def _optional_columns(shards: list[Path]) -> tuple[bool, bool]:
  """Checks every shard's columns; whether all of them carry `visit` and `place_of_service`."""
  schemas = [_checked_schema(p) for p in shards]
  present = {name: [name in s.names for s in schemas] for name in _OPTIONAL}
  for name, flags in present.items():
    if any(flags) and not all(flags):
      missing = shards[flags.index(False)]
      raise DataError(f"{missing}: column {name!r} is absent although other shards have it; "
                      "write it in every shard or in none")
  return all(present["visit"]), all(present["place_of_service"])


def _scan(shards: list[Path]) -> _Scan:
  """The first pass: distinct raw codes and each shard's subjects, streamed in record batches."""
  first_seen: dict[str, None] = {}
  subjects, rows = [], 0
  for path in shards:
    ids = []
    try:
      batches = _parquet(path).iter_batches(batch_size=_SCAN_BATCH_ROWS,
                                            columns=["subject_id", "code"])
      for batch in batches:
        rows += batch.num_rows
        sid, code = batch.column(0), batch.column(1)
        _check_not_null(path, sid, code)
        ids.append(_distinct(sid.cast(pa.int64()).to_numpy()))
        dictionary = code.dictionary.cast(pa.string()).to_pylist()
        used = np.flatnonzero(np.bincount(code.indices.to_numpy(zero_copy_only=False),
                                          minlength=len(dictionary)))
        for i in used:
          raw = dictionary[i]
          if raw not in first_seen:
            _check_length(path, raw, sid, code.indices, i)
            first_seen[raw] = None
    except (pa.ArrowInvalid, OSError) as e:
      raise DataError(f"{path}: cannot read the parquet data ({e}); the file may be truncated") from e
    subjects.append(_distinct(np.concatenate(ids)) if ids else np.zeros(0, np.int64))
  return _Scan(list(first_seen), subjects, rows)


def _distinct(x: np.ndarray) -> np.ndarray:
  """np.unique(x), in one pass when x is already sorted (as MEDS shards are, by subject)."""
  if len(x) and np.all(x[1:] >= x[:-1]):
    return x[np.concatenate([[True], x[1:] != x[:-1]])]
  return np.unique(x)


def _check_length(path: Path, raw: str, sid: pa.Array, indices: pa.Array, i: int) -> None:
  if len(raw) > MAX_CODE_LENGTH:
    row = int(np.flatnonzero(indices.to_numpy(zero_copy_only=False) == i)[0])
    raise DataError(f"{path}: subject {sid[row].as_py()} has a code of {len(raw)} characters "
                    f"({raw[:40]!r}...); codes longer than {MAX_CODE_LENGTH} are refused (a "
                    "broken export?)")


def _vocabulary(raw_codes: list[str], bare_code_system: str | None) -> _Vocab:
  """Classifies and normalises each distinct raw code once; the event codes' table, sorted."""
  kinds = np.empty(len(raw_codes), np.int8)
  canon = []
  for i, raw in enumerate(raw_codes):
    kinds[i], c = _classify(raw, bare_code_system)
    canon.append(c)
  is_event_code = kinds == _EVENT
  codes, event_index = np.unique(np.asarray(canon, dtype=str)[is_event_code], return_inverse=True)
  canon_index = np.zeros(len(raw_codes), np.int32)
  canon_index[is_event_code] = event_index
  empty = np.array([not raw.strip() for raw in raw_codes], bool)
  return _Vocab({raw: i for i, raw in enumerate(raw_codes)}, kinds, canon_index, empty, codes)


def _shard_groups(subjects: list[np.ndarray]) -> list[list[int]]:
  """Shards that share a subject are read together (a subject's rows must be sorted as one);
  MEDS ETLs put each subject in one shard, so normally every group is one shard."""
  parent = list(range(len(subjects)))

  def find(i):
    while parent[i] != i:
      parent[i] = parent[parent[i]]
      i = parent[i]
    return i

  ids = np.concatenate(subjects)
  shard = np.repeat(np.arange(len(subjects)), [len(s) for s in subjects])
  order = np.argsort(ids, kind="stable")
  ids, shard = ids[order], shard[order]
  for j in np.flatnonzero(ids[1:] == ids[:-1]):
    parent[find(int(shard[j + 1]))] = find(int(shard[j]))
  groups: dict[int, list[int]] = {}
  for i in range(len(subjects)):
    groups.setdefault(find(i), []).append(i)
  return list(groups.values())


def _encode_group(paths: list[Path], vocab: _Vocab, use_visit: bool, use_pos: bool, source: str,
                  prefix: Path) -> _Part:
  """Reads one shard group, sorts its rows, writes its events to `<prefix>.<column>` files.

  A single shard sorted by (subject, time) (as MEDS ETLs write them) is streamed in slices of
  `_SLICE_ROWS` rows cut at subject boundaries, so memory does not grow with the shard either;
  anything else (an unsorted shard, a subject split across shards) is read and sorted whole."""
  writer = _PartWriter(prefix)
  if len(paths) == 1 and _encode_streaming(paths[0], vocab, use_visit, use_pos, source, writer):
    return writer.finish()
  writer.reset()
  tables = [_read_shard(p) for p in paths]
  table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
  del tables
  _encode_rows(table, vocab, use_visit, use_pos, source, writer)
  return writer.finish()


def _encode_streaming(path: Path, vocab: _Vocab, use_visit: bool, use_pos: bool, source: str,
                      writer: "_PartWriter") -> bool:
  """Encodes a sorted shard slice by slice; False (having written part of it) if it is not
  sorted. Each slice ends before its last subject, whose rows may go on in the next batch."""
  pf = _parquet(path)
  carry = None
  try:
    for batch in pf.iter_batches(batch_size=_SLICE_ROWS, columns=_shard_columns(pf)):
      table = _cast_shard(pa.Table.from_batches([batch]))
      if carry is not None:
        table = pa.concat_tables([carry, table])
      subject = table.column("subject_id").to_numpy()
      if not _sorted_by(subject, _time_key(table),
                        table.column("visit").fill_null(0).to_numpy() if use_visit else None):
        return False
      cut = int(np.searchsorted(subject, subject[-1])) if len(subject) else 0
      if cut:
        _encode_rows(table.slice(0, cut), vocab, use_visit, use_pos, source, writer,
                     known_sorted=True)
      carry = table.slice(cut)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: cannot read the parquet data ({e}); the file may be truncated") from e
  if carry is not None and len(carry):
    _encode_rows(carry, vocab, use_visit, use_pos, source, writer, known_sorted=True)
  return True


def _time_key(table: pa.Table) -> np.ndarray:
  """int64 [rows]: the time in microseconds, static rows (null time) first."""
  time_col = table.column("time")
  has_time = ~np.asarray(time_col.is_null().to_numpy(zero_copy_only=False), bool)
  return np.where(has_time, time_col.fill_null(0).cast(pa.int64()).to_numpy(),
                  np.iinfo(np.int64).min)


class _PartWriter:
  """Collects one shard group's encoded slices: events appended to `<prefix>.<column>` files,
  patients in memory (a few numbers per patient)."""

  def __init__(self, prefix: Path):
    self.prefix = prefix
    self.reset()

  def reset(self) -> None:
    for name in _EVENT_COLUMNS:
      open(f"{self.prefix}.{name}", "wb").close()
    self.patients = dict(subject_id=[], sex=[], birth_day=[], counts=[], missing=[])
    self.empty_rows = 0

  def add(self, events: dict, counts, subject_id, sex, birth_day, missing, empty_rows) -> None:
    for name, dtype in _EVENT_COLUMNS.items():
      with open(f"{self.prefix}.{name}", "ab") as f:
        events[name].astype(dtype, copy=False).tofile(f)
    for name, value in (("subject_id", subject_id), ("sex", sex), ("birth_day", birth_day),
                        ("counts", counts), ("missing", missing)):
      self.patients[name].append(value)
    self.empty_rows += empty_rows

  def finish(self) -> _Part:
    cat = lambda name, dtype: (np.concatenate(self.patients[name]) if self.patients[name]
                               else np.zeros(0, dtype))
    counts = cat("counts", np.int64)
    offsets = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    return _Part(subject_id=cat("subject_id", np.int64), sex=cat("sex", np.int8),
                 birth_day=cat("birth_day", np.int64), offsets=offsets,
                 missing_birth=cat("missing", np.int64), empty_rows=self.empty_rows,
                 prefix=self.prefix)


def _encode_rows(table: pa.Table, vocab: _Vocab, use_visit: bool, use_pos: bool, source: str,
                 writer: _PartWriter, known_sorted: bool = False) -> None:
  """Sorts rows holding whole subjects (unless `known_sorted`) and hands their patients and
  events to `writer`."""
  subject = table.column("subject_id").to_numpy()
  time_col = table.column("time")
  has_time = ~np.asarray(time_col.is_null().to_numpy(zero_copy_only=False), bool)
  time_us = time_col.fill_null(0).cast(pa.int64()).to_numpy()
  value = table.column("numeric_value")
  value = (np.full(len(value), np.nan) if value.null_count == len(value)
           else value.to_numpy(zero_copy_only=False).astype(np.float64, copy=False))  # null -> NaN
  raw_index = _raw_index(table.column("code"), vocab.lookup)
  empty_rows = int(vocab.empty[raw_index].sum())

  # Stable sort by (subject, time, visit); static rows (null time) first within a subject. The
  # visit column is a key too: two visits on one day, with their rows repeated (a duplicated
  # extract), would otherwise interleave and read as visit numbers that decrease. Exact duplicate
  # rows are kept: a code recorded twice in one visit counts twice, as our own writer writes it.
  visit_key = table.column("visit").fill_null(0).to_numpy() if use_visit else None
  time_key = np.where(has_time, time_us, np.iinfo(np.int64).min)
  # Shards as MEDS ETLs (and `write_meds`) write them are sorted already: checked in one pass,
  # and the sort (most of the reading time) is skipped.
  order = None if known_sorted or _sorted_by(subject, time_key, visit_key) else np.lexsort(
      (visit_key if use_visit else np.zeros(len(subject), np.int8), time_key, subject))
  del visit_key, time_key
  take = (lambda a: a) if order is None else (lambda a: a[order])
  subject, time_us, has_time, value = take(subject), take(time_us), take(has_time), take(value)
  raw_index = take(raw_index)
  row_kind, row_code = vocab.kinds[raw_index], vocab.canon_index[raw_index]
  del raw_index
  visit_col = _int_column(table, "visit", order) if use_visit else None
  pos_col = _int_column(table, "place_of_service", order) if use_pos else None
  del table, order

  # Rows are sorted by subject now: each subject's index is a running count of changes.
  new_subject = np.concatenate([[True], subject[1:] != subject[:-1]]) if len(subject) else \
      np.zeros(0, bool)
  subject_ids, row_patient = subject[new_subject], np.cumsum(new_subject) - 1
  del new_subject
  num = len(subject_ids)
  # Birth: the first MEDS_BIRTH row with a time; sex: the last sex code (later rows win).
  birth_day = np.full(num, np.iinfo(np.int32).min, np.int64)
  is_birth = (row_kind == _BIRTH) & has_time
  first = np.unique(row_patient[is_birth], return_index=True)
  birth_day[first[0]] = np.floor_divide(time_us[is_birth][first[1]], _US_PER_DAY)
  has_birth = np.zeros(num, bool)
  has_birth[first[0]] = True
  sex = np.full(num, SEX_UNKNOWN, np.int8)
  is_sex = (row_kind == _FEMALE) | (row_kind == _MALE)
  sex[row_patient[is_sex]] = np.where(row_kind[is_sex] == _FEMALE, SEX_FEMALE, SEX_MALE)

  is_event = (row_kind == _EVENT) & has_time
  for name, col in (("visit", visit_col), ("place_of_service", pos_col)):
    if col is not None and np.any(col[1][is_event]):
      bad = int(subject[np.flatnonzero(col[1] & is_event)[0]])
      raise DataError(f"{source}: column {name!r} is null on an event row of subject {bad}; "
                      "fill it on every row with a time and a medical code")
  ev_patient = row_patient[is_event]
  ev_day = np.floor_divide(time_us[is_event], _US_PER_DAY)
  if use_visit:
    ev_visit = visit_col[0][is_event]
  else:
    ev_visit = _day_rank_per_patient(ev_patient, ev_day)
  ev_pos = pos_col[0][is_event] if use_pos else np.zeros(len(ev_day), np.int16)
  events = dict(code=row_code[is_event], day=ev_day, visit=ev_visit, pos=ev_pos,
                value=value[is_event])
  del subject, time_us, has_time, value, row_kind, row_code, visit_col, pos_col, is_event

  # Subjects without a birth row are dropped here (or refused, by `_check_births`).
  keep = has_birth[ev_patient]
  events = {k: v[keep] for k, v in events.items()} if not keep.all() else events
  counts = np.bincount(ev_patient[keep], minlength=num)[has_birth]
  _check_int32(source, "time", events["day"], birth_day[has_birth])
  # Every invariant of the final dataset that one subject can break (order, dates against the
  # birth), checked here on this slice's subjects, so the merged dataset needs no second pass.
  offsets = np.zeros(len(counts) + 1, np.int64)
  np.cumsum(counts, out=offsets[1:])
  PatientEvents.build(subject_id=subject_ids[has_birth], sex=sex[has_birth],
                      birth_day=birth_day[has_birth], offsets=offsets, code=events["code"],
                      day=events["day"], visit=events["visit"], pos=events["pos"],
                      codes=vocab.codes, source=source)
  writer.add(events, counts, subject_ids[has_birth], sex[has_birth], birth_day[has_birth],
             subject_ids[~has_birth], empty_rows)
def _sorted_by(subject: np.ndarray, time: np.ndarray, visit: np.ndarray | None) -> bool:
  """Whether rows are in (subject, time, visit) order already."""
  if len(subject) < 2:
    return True
  # Comparisons, not differences: the static rows' time key is the smallest int64.
  same_subject = subject[1:] == subject[:-1]
  if np.any(subject[1:] < subject[:-1]) or np.any(same_subject & (time[1:] < time[:-1])):
    return False
  return visit is None or not np.any(same_subject & (time[1:] == time[:-1])
                                     & (visit[1:] < visit[:-1]))


def _raw_index(code: pa.ChunkedArray, lookup: dict[str, int]) -> np.ndarray:
  """int32 [rows]: each row's index among the distinct raw codes (`lookup`), chunk by chunk
  through the chunk's dictionary, so no string is touched per row."""
  parts = []
  for chunk in code.chunks:
    lut = np.fromiter((lookup[s] for s in chunk.dictionary.cast(pa.string()).to_pylist()),
                      np.int32, len(chunk.dictionary))
    parts.append(lut[chunk.indices.to_numpy(zero_copy_only=False)])
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def _check_births(source: str, parts: list[_Part], missing_birth: str) -> None:
  missing = np.concatenate([p.missing_birth for p in parts])
  if not len(missing):
    return
  num = len(missing) + sum(len(p.subject_id) for p in parts)
  msg = (f"{source}: {len(missing)} of {num} subjects have no {BIRTH_CODE} row (e.g. subject "
         f"{missing.min()}), so their ages are unknown")
  if missing_birth == "error":
    raise DataError(msg + "; add a MEDS_BIRTH row per subject or read with missing_birth='drop'")
  if len(missing) == num:
    raise DataError(msg + f"; add a {BIRTH_CODE} row (time = birth date) per subject")
  log.warning("%s; they are dropped", msg)


def _merge(parts: list[_Part], tmp: Path) -> tuple[dict, dict]:
  """All groups' patients in ascending subject id, and their events memory-mapped from files
  written one bounded chunk of patients at a time (each group's patients in a subject range
  are a contiguous run of its files)."""
  subject_id = np.concatenate([p.subject_id for p in parts])
  order = np.argsort(subject_id, kind="stable")
  subject_id = subject_id[order]
  lengths = np.concatenate([np.diff(p.offsets) for p in parts])[order]
  offsets = np.zeros(len(subject_id) + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  patients = dict(subject_id=subject_id,
                  sex=np.concatenate([p.sex for p in parts])[order],
                  birth_day=np.concatenate([p.birth_day for p in parts])[order],
                  offsets=offsets)
  total = int(offsets[-1])
  columns = dict(_EVENT_COLUMNS, age=np.float32)
  outputs = {name: open(tmp / f"all.{name}", "wb") for name in columns}
  birth_day = patients["birth_day"].astype(np.int32)
  try:
    bounds = np.unique(np.concatenate([
        np.searchsorted(offsets, np.arange(0, total, _MERGE_EVENTS), side="right") - 1,
        [len(subject_id)]]))
    for a, b in zip(bounds[:-1], bounds[1:]):
      if b > a:
        day = _merge_chunk(parts, subject_id[a], subject_id[b - 1], outputs)
        # The age `PatientEvents.build` would derive, written beside the events (the same
        # expression), so that no event-sized array is kept in memory.
        born = np.repeat(birth_day[a:b], lengths[a:b])
        ((day - born) / DAYS_PER_YEAR).astype(np.float32).tofile(outputs["age"])
  finally:
    for f in outputs.values():
      f.close()
  events = {name: (np.asarray(np.memmap(tmp / f"all.{name}", dtype, mode="c", shape=(total,)))
                   if total else np.zeros(0, dtype))
            for name, dtype in columns.items()}
  return patients, events


def _merge_chunk(parts: list[_Part], lo: int, hi: int, outputs: dict) -> np.ndarray:
  """Appends the events of subjects `lo`..`hi` (inclusive), in subject order, to `outputs`;
  returns their days."""
  pieces, ids, lens = {name: [] for name in _EVENT_COLUMNS}, [], []
  for part in parts:
    a, b = np.searchsorted(part.subject_id, [lo, hi + 1])
    if b == a:
      continue
    start, stop = int(part.offsets[a]), int(part.offsets[b])
    for name, dtype in _EVENT_COLUMNS.items():
      size = np.dtype(dtype).itemsize
      pieces[name].append(np.fromfile(f"{part.prefix}.{name}", dtype, stop - start,
                                      offset=start * size))
    ids.append(part.subject_id[a:b])
    lens.append(np.diff(part.offsets[a:b + 1]))
  lens = np.concatenate(lens)
  starts = np.cumsum(lens) - lens
  order = np.argsort(np.concatenate(ids), kind="stable")
  gather = gather_ranges(starts[order], lens[order]) if len(parts) > 1 else None
  for name, chunks in pieces.items():
    column = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
    pieces[name] = column if gather is None else column[gather]
    pieces[name].tofile(outputs[name])
  return pieces["day"]


def _official(what: str, path, schema, value, strict: bool = True):
  """Checks `value` (a table or a JSON object) against the official `meds` package's schema: an
  error when writing (`strict`), a warning when reading, since the reader also accepts common
  variants it can cast safely (another timestamp unit or a time zone, int32 ids)."""
  try:
    schema.validate(value)
  except Exception as e:  # the package raises its own error types, per schema kind
    if not strict:
      log.warning("%s: the %s does not match the MEDS %s schema (%s); read after casting", path,
                  what, meds_schema.__version__, e)
      return
    raise DataError(f"{path}: the {what} does not match the MEDS {meds_schema.__version__} schema "
                    f"({type(e).__name__}: {e})") from e


def _parquet(path: Path, dictionary: bool = True) -> pq.ParquetFile:
  """The shard, opened with `code` read dictionary-encoded (one string per distinct code)."""
  if path.stat().st_size == 0:
    raise DataError(f"{path}: the file is empty (0 bytes); delete it or rewrite the shard")
  try:
    return pq.ParquetFile(path, read_dictionary=["code"] if dictionary else None)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: not a readable parquet file ({e}); replace or delete the shard") from e


def _checked_schema(path: Path) -> pa.Schema:
  """The shard's Arrow schema (as written), its MEDS columns checked."""
  schema = _parquet(path, dictionary=False).schema_arrow
  for name, (what, ok) in _REQUIRED.items():
    if name not in schema.names:
      raise DataError(f"{path}: MEDS column {name!r} is missing (found columns: "
                      f"{', '.join(schema.names)}); a MEDS shard needs subject_id, time and code")
    if not ok(schema.field(name).type):
      raise DataError(f"{path}: column {name!r} has type {schema.field(name).type}, expected "
                      f"{what}; convert the column before loading")
  for name, (what, ok) in _OPTIONAL.items():
    if name in schema.names and not ok(schema.field(name).type):
      raise DataError(f"{path}: extra column {name!r} has type {schema.field(name).type}, "
                      f"expected {what}; convert it or drop the column")
  if "numeric_value" in schema.names and not _is_number(schema.field("numeric_value").type):
    raise DataError(f"{path}: column 'numeric_value' has type {schema.field('numeric_value').type}, "
                    "expected a number (float32); convert the column before loading")
  _official("data shard", path, meds_schema.DataSchema, schema, strict=False)
  return schema


def _check_not_null(path: Path, subject_id, code) -> None:
  if subject_id.null_count:
    raise DataError(f"{path}: column 'subject_id' has {subject_id.null_count} null "
                    "values; every row needs a subject")
  if code.null_count:
    raise DataError(f"{path}: column 'code' has {code.null_count} null values; "
                    "every row needs a code")


def _shard_columns(pf: pq.ParquetFile) -> list[str]:
  names = pf.schema_arrow.names
  return (list(_REQUIRED) + [n for n in _OPTIONAL if n in names]
          + ["numeric_value"] * ("numeric_value" in names))


def _read_shard(path: Path) -> pa.Table:
  """One shard, cast to the common schema (`_cast_shard`). Its columns were checked by
  `_checked_schema`."""
  pf = _parquet(path)
  try:
    return _cast_shard(pf.read(columns=_shard_columns(pf)))
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: cannot read the parquet data ({e}); the file may be truncated") from e


def _cast_shard(t: pa.Table) -> pa.Table:
  """Rows in the common schema: `code` dictionary-encoded, `numeric_value` float64 and the
  optional columns null where absent."""
  time = t.column("time")
  if pa.types.is_timestamp(time.type):  # any unit; a time zone is dropped (values stay UTC)
    time = time.cast(pa.timestamp("us", tz=time.type.tz)).cast(pa.int64()).cast(pa.timestamp("us"))
  else:
    time = time.cast(pa.timestamp("us"))
  value = (t.column("numeric_value").cast(pa.float64()) if "numeric_value" in t.column_names
           else pa.nulls(len(t), pa.float64()))
  code = t.column("code").cast(pa.dictionary(pa.int32(), pa.string()))
  arrays = [t.column("subject_id").cast(pa.int64()), time, code, value]
  names = ["subject_id", "time", "code", "numeric_value"]
  for name, dtype in (("visit", pa.int32()), ("place_of_service", pa.int16())):
    arrays.append(t.column(name).cast(dtype) if name in t.column_names else pa.nulls(len(t), dtype))
    names.append(name)
  return pa.Table.from_arrays(arrays, names=names)


def _is_number(t: pa.DataType) -> bool:
  return pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_decimal(t) \
      or pa.types.is_null(t)


def _classify(raw: str, bare_code_system: str | None) -> tuple[int, str]:
  s = raw.strip()
  if not s:
    return _SKIP, ""
  if s == BIRTH_CODE:
    return _BIRTH, ""
  m = _SEX_RE.match(s)
  if m:
    return (_FEMALE if m.group(2).upper().startswith("F") else _MALE), ""
  upper = s.upper()
  if upper.startswith(("GENDER/", "SEX/")) or any(upper.startswith(p) for p in META_CODE_PREFIXES):
    return _SKIP, ""
  return _EVENT, normalize_code(s, bare_code_system)


def _int_column(table: pa.Table, name: str, order: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray]:
  """(values with nulls as 0, null mask), rows in `order` (None: as they are)."""
  col = table.column(name)
  null = np.asarray(col.is_null().to_numpy(zero_copy_only=False), bool)
  values = col.fill_null(0).to_numpy()
  return (values, null) if order is None else (values[order], null[order])


def _day_rank_per_patient(patient: np.ndarray, day: np.ndarray) -> np.ndarray:
  """0-based rank of each event's day among its patient's distinct days (rows sorted by both)."""
  if len(day) == 0:
    return np.zeros(0, np.int32)
  new = np.ones(len(day), bool)
  new[1:] = (patient[1:] != patient[:-1]) | (day[1:] != day[:-1])
  count = np.cumsum(new)
  first_of_patient = np.ones(len(day), bool)
  first_of_patient[1:] = patient[1:] != patient[:-1]
  base = np.maximum.accumulate(np.where(first_of_patient, count, 0))
  return (count - base).astype(np.int32)


def _check_int32(source: str, column: str, *days: np.ndarray) -> None:
  lo, hi = np.iinfo(np.int32).min, np.iinfo(np.int32).max
  for d in days:
    if len(d) and (d.min() < lo or d.max() > hi):
      raise DataError(f"{source}: column {column!r} holds dates outside the supported range")


def _read_splits(root: Path, subject_ids: np.ndarray) -> tuple[np.ndarray | None, bool]:
  path = root / "metadata" / "subject_splits.parquet"
  if not path.exists():
    return None, False
  try:
    t = pq.read_table(path)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: not a readable parquet file ({e}); fix or delete it") from e
  for name in ("subject_id", "split"):
    if name not in t.column_names:
      raise DataError(f"{path}: column {name!r} is missing; the splits file needs subject_id and "
                      "split")
  if not pa.types.is_integer(t.schema.field("subject_id").type):
    raise DataError(f"{path}: column 'subject_id' has type {t.schema.field('subject_id').type}, "
                    "expected an integer (int64)")
  ids = t.column("subject_id").to_numpy(zero_copy_only=False)
  names = t.column("split").cast(pa.string()).to_pylist()
  unknown = sorted({str(n) for n in names if n not in _SPLIT_ALIASES})
  if unknown:
    raise DataError(f"{path}: column 'split' has unknown values {unknown}; use "
                    f"{', '.join(SPLIT_NAMES)}")
  value = np.fromiter((_SPLIT_ALIASES[n] for n in names), np.int8, len(names))
  order = np.argsort(ids, kind="stable")
  ids, value = ids[order], value[order]
  pos = np.clip(np.searchsorted(ids, subject_ids), 0, max(len(ids) - 1, 0))
  found = (ids[pos] == subject_ids) if len(ids) else np.zeros(len(subject_ids), bool)
  if not found.all():
    missing = subject_ids[~found]
    raise DataError(f"{path}: {len(missing)} subjects of data/ have no split (e.g. subject "
                    f"{missing[0]}); add them to the splits file or delete it to assign splits "
                    "by subject hash")
  return value[pos], True


# ------------------------------------------------------------------------------------ writing
def write_meds(ds: PatientEvents, out_dir: str | Path, *, overwrite: bool = False,
               descriptions: Mapping[str, str] | None = None, splits: bool = True,
               subjects_per_shard: int = 100_000, dataset_name: str | None = None,
               metadata: Mapping | None = None, files: Mapping[str, str] | None = None,
               labels: Mapping[str, pa.Table] | None = None,
               source: "SourceCodes | None" = None) -> Path:
  """Writes `ds` as a MEDS directory, atomically; returns its path.

  Each patient gets a `MEDS_BIRTH` row (time = birth day), a `GENDER//F` or `GENDER//M` row when
  the sex is known, and one row per event (time = the event's day at midnight, `numeric_value`
  null) with the extra columns `visit` and `place_of_service`. Patients are written in the order of
  `ds`, `subjects_per_shard` to a shard (`data/0.parquet`, `data/1.parquet`, ...).
  `descriptions` (code -> text) fills `metadata/codes.parquet`'s description column. With
  `splits=False` no `subject_splits.parquet` is written, so `load_dataset` assigns splits from the
  config. An existing `out_dir` is refused unless `overwrite`. `metadata` is merged into
  `metadata/dataset.json` (provenance), `files` (name -> text) are written at the top level (a data
  card), and `labels` (name -> a `cohort_labels` table) as `labels/<name>.parquet`, inside the same
  atomic rename. `source` (`source_codes.SourceCodes`) writes each code in the source's spelling
  and only the extension columns the source has (what it lacks is not invented).
  """
  out = Path(out_dir)
  if out.exists() and not overwrite:
    raise DataError(f"{out} already exists; choose another output directory or pass "
                    "overwrite=True (--overwrite) to replace it")
  if subjects_per_shard < 1:
    raise DataError(f"subjects_per_shard must be at least 1, got {subjects_per_shard}")
  ds.validate("dataset to write")
  with io.atomic_directory(out, overwrite=overwrite) as tmp:
    tmp.chmod(0o755)  # mkdtemp makes it private; a dataset directory is normally shared
    (tmp / "data").mkdir()
    (tmp / "metadata").mkdir()
    for shard, start in enumerate(range(0, max(ds.num_patients, 1), subjects_per_shard)):
      part = ds.select(np.arange(start, min(start + subjects_per_shard, ds.num_patients)))
      rows = _in_source_words(_rows(part), source)
      _official("data shard", f"data/{shard}.parquet", meds_schema.DataSchema, rows)
      pq.write_table(rows, tmp / "data" / f"{shard}.parquet")
    codes = _codes_table(ds, descriptions or {}, source)
    _official("code metadata", "metadata/codes.parquet", meds_schema.CodeMetadataSchema, codes)
    pq.write_table(codes, tmp / "metadata" / "codes.parquet")
    if splits:
      table = pa.table({
          "subject_id": pa.array(ds.subject_id, pa.int64()),
          "split": pa.DictionaryArray.from_arrays(pa.array(ds.split, pa.int8()),
                                                  pa.array(SPLIT_NAMES)).cast(pa.string())})
      _official("subject splits", "metadata/subject_splits.parquet", meds_schema.SubjectSplitSchema, table)
      pq.write_table(table, tmp / "metadata" / "subject_splits.parquet")
    meta = dict(dataset_name=dataset_name or out.name, dataset_version="1",
                etl_name="rltf_jax", etl_version=rltf_jax.__version__, meds_version=MEDS_VERSION,
                created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                other_extension_columns=list(_extension_columns(source)),
                extra_columns={k: v for k, v in dict(
                    visit="0-based visit index within the subject",
                    place_of_service="CMS place-of-service code of the visit (0 unknown)").items()
                    if k in _extension_columns(source)})
    _official("dataset metadata", "metadata/dataset.json", meds_schema.DatasetMetadataSchema, meta)
    meta.update(metadata or {})
    (tmp / "metadata" / "dataset.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    for name, text in (files or {}).items():
      (tmp / name).write_text(text)
    if labels:
      (tmp / "labels").mkdir()
      for name, table in labels.items():
        _official("label file", f"labels/{name}.parquet", meds_schema.LabelSchema, table)
        pq.write_table(table, tmp / "labels" / f"{name}.parquet")
  return out


def cohort_labels(ds: PatientEvents, codes, member: np.ndarray | None = None) -> pa.Table:
  """MEDS label rows (the `meds.LabelSchema`): one per patient, `boolean_value` = a code of `codes`
  occurs in the record (or `member`, when given: an ACES cohort's labels), `prediction_time` = the
  end of the day of the record's last event (the label uses the whole record). The record is the
  dataset's: on a source read with `data.include`, rows of the families it drops and the stay
  bookkeeping the reader drops (transfers, discharges, deaths) may come later than that time."""
  member = ds.patients_with_any(codes) if member is None else np.asarray(member, bool)
  ends = ds.offsets[1:]
  last = np.where(ds.lengths > 0, ds.day[np.maximum(ends - 1, 0)] if ds.num_events else 0,
                  ds.birth_day).astype(np.int64)
  end_us = (last + 1) * 86_400 * 10**6 - 1
  return pa.table({"subject_id": pa.array(ds.subject_id, pa.int64()),
                   "prediction_time": pa.array(end_us, pa.int64()).cast(pa.timestamp("us")),
                   "boolean_value": pa.array(member, pa.bool_())})


def write_labels(table: pa.Table, path: str | Path) -> Path:
  """Writes a `cohort_labels` table as one parquet file, validated against the MEDS label schema
  (atomic; a file that already holds the same rows is left alone, so a rerun on read-only storage
  does not fail)."""
  path = Path(path)
  _official("label file", path, meds_schema.LabelSchema, table)
  if path.exists():
    try:
      if pq.read_table(path).equals(table):
        return path
    except (pa.ArrowInvalid, OSError):
      pass  # unreadable: rewritten below
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink)
  return io.atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _rows(ds: PatientEvents) -> pa.Table:
  """The MEDS rows of `ds`: per patient, sex (static, if known), birth, then the events."""
  n, e = ds.num_patients, ds.num_events
  known = ds.sex != SEX_UNKNOWN
  # Code dictionary: 0 = MEDS_BIRTH, 1 = GENDER//F, 2 = GENDER//M, 3 + i = ds.codes[i].
  dictionary = pa.array([BIRTH_CODE, SEX_CODES[SEX_FEMALE], SEX_CODES[SEX_MALE], *ds.codes.tolist()],
                        pa.string())
  patient = np.concatenate([np.flatnonzero(known), np.arange(n), ds.event_patient()])
  order = np.argsort(patient, kind="stable")
  code = np.concatenate([np.where(ds.sex[known] == SEX_FEMALE, 1, 2), np.zeros(n, np.int32),
                         ds.code.astype(np.int32) + 3])[order]
  day = np.concatenate([np.zeros(known.sum(), np.int32), ds.birth_day, ds.day]).astype(np.int64)
  time_null = np.concatenate([np.ones(known.sum(), bool), np.zeros(n, bool), np.zeros(e, bool)])
  static = np.concatenate([np.ones(n + known.sum(), bool), np.zeros(e, bool)])[order]
  visit = np.concatenate([np.zeros(n + known.sum(), np.int32), ds.visit])[order]
  pos = np.concatenate([np.zeros(n + known.sum(), np.int16), ds.pos])[order]
  return pa.table({
      "subject_id": pa.array(ds.subject_id[patient[order]], pa.int64()),
      "time": pa.array((day * _US_PER_DAY)[order], pa.timestamp("us"), mask=time_null[order]),
      "code": pa.DictionaryArray.from_arrays(pa.array(code, pa.int32()), dictionary)
                .cast(pa.string()),
      "numeric_value": pa.nulls(len(order), pa.float32()),
      "visit": pa.array(visit, pa.int32(), mask=static),
      "place_of_service": pa.array(pos, pa.int16(), mask=static),
  })


def _extension_columns(source) -> tuple[str, ...]:
  cols = ("visit", "place_of_service")
  return cols if source is None else tuple(c for c in cols if source.columns.get(c))


def _in_source_words(rows: pa.Table, source) -> pa.Table:
  """`_rows`' table with each code in the source's spelling and without the extension columns the
  source lacks (`source_codes.SourceCodes`; None: as it is)."""
  if source is None:
    return rows
  encoded = rows.column("code").combine_chunks().dictionary_encode()
  words = pa.array([source.spelling(c) for c in encoded.dictionary.to_pylist()], pa.string())
  rows = rows.set_column(rows.schema.get_field_index("code"), "code",
                         pa.DictionaryArray.from_arrays(encoded.indices, words).cast(pa.string()))
  return rows.select([n for n in rows.column_names
                      if n not in ("visit", "place_of_service") or n in _extension_columns(source)])


def _codes_table(ds: PatientEvents, descriptions: Mapping[str, str], source=None) -> pa.Table:
  codes = [BIRTH_CODE, SEX_CODES[SEX_FEMALE], SEX_CODES[SEX_MALE], *ds.codes.tolist()]
  if source is not None:
    codes = list(dict.fromkeys(source.spelling(c) for c in codes))  # two bins: one source code
  return pa.table({
      "code": pa.array(codes, pa.string()),
      "description": pa.array([descriptions.get(c) for c in codes], pa.string()),
      "parent_codes": pa.nulls(len(codes), pa.list_(pa.string())),
  })


# ------------------------------------------------------------------------------------ command line
def main(argv: list[str] | None = None) -> int:
  import argparse
  parser = argparse.ArgumentParser(
      prog="python -m rltf_jax.data.meds",
      description="Convert MIMIC-IV hosp/ CSV tables to a MEDS directory, or summarise one.")
  parser.add_argument("--convert-mimic", metavar="SRC", help="MIMIC-IV directory (or its hosp/)")
  parser.add_argument("--out", metavar="DST", help="MEDS directory to write (must not exist)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  parser.add_argument("--summary", metavar="MEDS_DIR", help="print a summary of a MEDS directory")
  args = parser.parse_args(argv)
  if args.summary:
    ds, has_splits = read_meds(args.summary)
    print(json.dumps(dict(ds.summary(), has_splits=has_splits), indent=2))
    return 0
  if not args.convert_mimic or not args.out:
    parser.error("give --convert-mimic SRC --out DST (or --summary MEDS_DIR)")
  ds = mimic.read_mimic(args.convert_mimic)
  # MIMIC has no official splits: none are written, so `load_dataset` assigns them by subject hash
  # from the config's split fractions and seed.
  out = write_meds(ds, args.out, overwrite=args.overwrite, splits=False,
                   descriptions=mimic.read_descriptions(args.convert_mimic))
  print(f"wrote {ds.num_patients} patients, {ds.num_events} events to {out}")
  return 0


if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  cli_main(main)
