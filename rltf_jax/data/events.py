"""The in-memory patient-event dataset every stage reads, whatever the data source.

Columnar layout: one flat array per event attribute and per-patient `offsets`, so that patient `p`
owns events `offsets[p]:offsets[p + 1]`. A million patients with a hundred events each take about
2 GB and slicing a batch is a gather, never a loop over Python objects.

Events of a patient are in time order. Each event is a code (an index into `codes`, the dataset's
table of canonical code strings, see `codes.py`) with the day of its visit, the 0-based visit index
within the patient, the age at that visit in years and the CMS place-of-service code of the visit
(11 office, 21 inpatient, 22 outpatient hospital, 23 emergency room, 81 laboratory, ...; 0 unknown).
Sex and birth day are static per patient. Days count from 1970-01-01.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rltf_jax import io
from rltf_jax.data.codes import CodeType, code_types
from rltf_jax.errors import DataError

# "pairs" and "eval": the cohort-enriched sample's two parts (rltf_jax/data/enrich.py); the
# population's own patients are in train / valid / test.
SPLITS = ("train", "valid", "test", "pairs", "eval")
TRAIN, VALID, TEST = 0, 1, 2
SEX_FEMALE, SEX_MALE, SEX_UNKNOWN = 0, 1, -1
DAYS_PER_YEAR = 365.25
MAX_AGE_YEARS = 130  # an event later than this after birth is a misdated row


def _date(day) -> str:
  """Days since 1970-01-01 as an ISO date, for messages."""
  return str(np.datetime64(int(day), "D"))

# Common CMS place-of-service codes (documentation and report labels; any int16 is accepted).
PLACES_OF_SERVICE = {
    0: "unknown", 11: "office", 12: "home", 19: "off-campus outpatient hospital",
    20: "urgent care", 21: "inpatient hospital", 22: "on-campus outpatient hospital",
    23: "emergency room", 24: "ambulatory surgical center", 31: "skilled nursing facility",
    32: "nursing facility", 41: "ambulance", 49: "independent clinic", 61: "inpatient rehabilitation",
    65: "dialysis facility", 81: "independent laboratory",
}


@dataclasses.dataclass(frozen=True, eq=False)
class PatientEvents:
  """Patients as flat event arrays. Build with `PatientEvents.build`, which validates."""
  subject_id: np.ndarray  # int64 [P]
  sex: np.ndarray         # int8 [P]: 0 female, 1 male, -1 unknown
  birth_day: np.ndarray   # int32 [P]: days since 1970-01-01
  split: np.ndarray       # int8 [P]: index into SPLITS (0 train, 1 valid, 2 test, ...)
  offsets: np.ndarray     # int64 [P + 1]
  code: np.ndarray        # int32 [E]: index into `codes`
  day: np.ndarray         # int32 [E]: day of the event's visit
  visit: np.ndarray       # int32 [E]: 0-based visit index within the patient
  pos: np.ndarray         # int16 [E]: place of service of the visit
  age: np.ndarray         # float32 [E]: (day - birth_day) / 365.25, derived by `build`
  codes: np.ndarray       # str [C]: canonical code strings

  # ---------------------------------------------------------------- construction
  @classmethod
  def build(cls, *, subject_id, sex, birth_day, offsets, code, day, visit, pos, codes,
            split=None, source: str = "arrays", checked: bool = False,
            age=None) -> "PatientEvents":
    """Casts, derives `age`, validates; `source` names the input in error messages. `checked`:
    the caller validated every patient's events already (a reader that builds each slice of
    patients first), so the whole-dataset pass, which reads every event, is skipped; such a
    caller may pass the `age` it derived the same way (a memory-mapped array, say)."""
    subject_id = np.asarray(subject_id, np.int64)
    offsets = np.asarray(offsets, np.int64)
    birth_day = np.asarray(birth_day, np.int32)
    day = np.asarray(day, np.int32)
    n = len(subject_id)
    if split is None:
      split = np.zeros(n, np.int8)
    if len(offsets) != n + 1:
      raise DataError(f"{source}: offsets has {len(offsets)} entries for {n} patients (need P + 1)")
    if len(day) != offsets[-1]:
      raise DataError(f"{source}: {len(day)} event days but offsets describe {offsets[-1]} events")
    if age is None or not checked:
      age = _ages(day, birth_day, offsets)
    age = np.asarray(age, np.float32)
    ds = cls(subject_id=subject_id, sex=np.asarray(sex, np.int8), birth_day=birth_day,
             split=np.asarray(split, np.int8), offsets=offsets, code=np.asarray(code, np.int32),
             day=day, visit=np.asarray(visit, np.int32), pos=np.asarray(pos, np.int16), age=age,
             codes=np.asarray(codes, dtype=str))
    if not checked:
      ds.validate(source)
    return ds

  def validate(self, source: str = "dataset") -> None:
    """Raises `DataError` naming `source` and the first broken invariant."""
    n, e = self.num_patients, self.num_events
    for name in ("sex", "birth_day", "split"):
      if len(getattr(self, name)) != n:
        raise DataError(f"{source}: '{name}' has {len(getattr(self, name))} rows for {n} patients")
    for name in ("code", "day", "visit", "pos", "age"):
      if len(getattr(self, name)) != e:
        raise DataError(f"{source}: '{name}' has {len(getattr(self, name))} rows for {e} events")
    if self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
      raise DataError(f"{source}: offsets must start at 0 and never decrease")
    if len(np.unique(self.subject_id)) != n:
      raise DataError(f"{source}: subject ids are not unique")
    if e and (self.code.min() < 0 or self.code.max() >= len(self.codes)):
      raise DataError(f"{source}: code index out of range of the {len(self.codes)}-entry code table")
    if e == 0:
      return
    if np.any(self.split < 0) or np.any(self.split >= len(SPLITS)):
      raise DataError(f"{source}: split must be an index into {SPLITS}")
    # Within a patient, days and visit indices never decrease (checked on event pairs that do
    # not cross a patient boundary), a bounded chunk of events at a time (whole-array
    # temporaries were 0.5 GB at 67 million events).
    starts = self.offsets[1:-1]
    starts = starts[(starts > 0) & (starts < e)]
    for lo in range(0, e - 1, _CHECK_CHUNK):
      hi = min(lo + _CHECK_CHUNK, e - 1)  # pairs (i, i + 1) for i in [lo, hi)
      same = np.ones(hi - lo, bool)
      inside = starts[(starts - 1 >= lo) & (starts - 1 < hi)]
      same[inside - 1 - lo] = False
      for column, what in ((self.day, "events of subject {} are not sorted by time; sort each "
                                     "subject's rows by time before loading"),
                           (self.visit, "visit indices of subject {} decrease")):
        bad = np.flatnonzero(same & (np.diff(column[lo:hi + 1]) < 0))
        if len(bad):
          p = int(np.searchsorted(self.offsets, lo + bad[0], side="right") - 1)
          raise DataError(f"{source}: " + what.format(self.subject_id[p]))
    # Dates a reader got wrong (a year 1800 or 2200 timestamp): every event lies between the
    # patient's birth and MAX_AGE_YEARS after it.
    for bad, what in ((_flatnonzero_chunked(self.age, lambda a: a < 0), "before its birth"),
                      (_flatnonzero_chunked(self.age, lambda a: a > MAX_AGE_YEARS),
                       f"more than {MAX_AGE_YEARS} years after its birth")):
      if len(bad):
        i = int(bad[0])
        p = int(np.searchsorted(self.offsets, i, side="right") - 1)
        raise DataError(
            f"{source}: subject {self.subject_id[p]} has an event on {_date(self.day[i])} "
            f"(code {self.codes[self.code[i]]}) {what} ({_date(self.birth_day[p])}); "
            f"{len(bad)} events in all; fix the dates or drop those rows")

  # ---------------------------------------------------------------- shape
  @property
  def num_patients(self) -> int:
    return len(self.subject_id)

  @property
  def num_events(self) -> int:
    return len(self.code)

  def __len__(self) -> int:
    return self.num_patients

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)

  @property
  def birth_year(self) -> np.ndarray:
    return (1970 + np.floor(self.birth_day / DAYS_PER_YEAR)).astype(np.int32)

  @property
  def code_type(self) -> np.ndarray:
    """int8 [C]: `CodeType` of each entry of `codes`."""
    return code_types(self.codes)

  def event_patient(self) -> np.ndarray:
    """int64 [E]: the patient index of each event."""
    return np.repeat(np.arange(self.num_patients), self.lengths)

  def patient(self, p: int) -> dict[str, np.ndarray]:
    """One patient's events as a dict of arrays, codes as strings (for inspection and tests)."""
    s = slice(self.offsets[p], self.offsets[p + 1])
    return dict(subject_id=self.subject_id[p], sex=self.sex[p], birth_day=self.birth_day[p],
                code=self.codes[self.code[s]], day=self.day[s], visit=self.visit[s],
                pos=self.pos[s], age=self.age[s])

  # ---------------------------------------------------------------- selection
  def select(self, patients: Sequence[int] | np.ndarray) -> "PatientEvents":
    """A new dataset with the given patients, in the given order (a vectorised gather)."""
    idx = np.asarray(patients)
    idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
    lens = self.lengths[idx]
    offsets = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    ev = gather_ranges(self.offsets[idx], lens)
    return dataclasses.replace(
        self, subject_id=self.subject_id[idx], sex=self.sex[idx], birth_day=self.birth_day[idx],
        split=self.split[idx], offsets=offsets, code=self.code[ev], day=self.day[ev],
        visit=self.visit[ev], pos=self.pos[ev], age=self.age[ev])

  def used_codes_only(self) -> "PatientEvents":
    """The same records with a code table of only the codes they use (in the table's order), so
    that a subset's fingerprint does not depend on codes only other patients had."""
    used, code = np.unique(self.code, return_inverse=True)
    return dataclasses.replace(self, codes=self.codes[used], code=code.astype(self.code.dtype))

  def split_indices(self, name: str) -> np.ndarray:
    if name not in SPLITS:
      raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
    return np.flatnonzero(self.split == SPLITS.index(name))

  def subset(self, name: str) -> "PatientEvents":
    return self.select(self.split_indices(name))

  def with_splits(self, split: np.ndarray) -> "PatientEvents":
    return dataclasses.replace(self, split=np.asarray(split, np.int8))

  # ---------------------------------------------------------------- codes
  def code_ids(self, code_strings: Iterable[str]) -> np.ndarray:
    """Indices into `codes` of those of `code_strings` the dataset has (absent ones are dropped)."""
    wanted = set(code_strings)
    return np.flatnonzero(np.fromiter((c in wanted for c in self.codes), bool, len(self.codes)))

  def event_is_any(self, code_strings: Iterable[str]) -> np.ndarray:
    """bool [E]: whether each event's code is one of `code_strings`."""
    lut = np.zeros(len(self.codes), bool)
    lut[self.code_ids(code_strings)] = True
    return lut[self.code]

  def patients_with_any(self, code_strings: Iterable[str]) -> np.ndarray:
    """bool [P]: whether each patient has at least one of `code_strings`."""
    return self.count_per_patient(self.event_is_any(code_strings)) > 0

  def count_per_patient(self, event_mask: np.ndarray) -> np.ndarray:
    """int64 [P]: how many of each patient's events have `event_mask` set."""
    cs = np.concatenate([[0], np.cumsum(event_mask, dtype=np.int64)])
    return cs[self.offsets[1:]] - cs[self.offsets[:-1]]

  def first_position_of_any(self, code_strings: Iterable[str]) -> np.ndarray:
    """int64 [P]: position within the patient of the first event with one of `code_strings`, or -1."""
    hit = np.flatnonzero(self.event_is_any(code_strings))
    first = np.full(self.num_patients, -1, np.int64)
    if len(hit):
      pat = np.searchsorted(self.offsets, hit, side="right") - 1
      uniq, at = np.unique(pat, return_index=True)  # hits are sorted, so `at` is each first hit
      first[uniq] = hit[at] - self.offsets[uniq]
    return first

  def code_counts(self) -> np.ndarray:
    """int64 [C]: number of events of each code (a chunk at a time: bincount widens its input to
    int64, a 0.5 GB copy at 67 million events)."""
    counts = np.zeros(len(self.codes), np.int64)
    for lo in range(0, self.num_events, _CHECK_CHUNK):
      counts += np.bincount(self.code[lo:lo + _CHECK_CHUNK], minlength=len(self.codes))
    return counts

  def code_patient_counts(self) -> np.ndarray:
    """int64 [C]: number of patients with at least one event of each code."""
    pairs = np.unique(self.event_patient() * len(self.codes) + self.code)
    return np.bincount(pairs % len(self.codes), minlength=len(self.codes))

  # ---------------------------------------------------------------- comparison and storage
  def equals(self, other: "PatientEvents") -> bool:
    """Same patients, events and codes (compared as strings, so code-table order may differ)."""
    if self.num_patients != other.num_patients or self.num_events != other.num_events:
      return False
    same = all(np.array_equal(getattr(self, f), getattr(other, f))
               for f in ("subject_id", "sex", "birth_day", "split", "offsets", "day", "visit", "pos"))
    return same and np.array_equal(self.codes[self.code], other.codes[other.code])

  def fingerprint(self) -> str:
    """Short hash of the patients and events (codes as strings), for cache and run keys."""
    h = hashlib.sha256()
    # The arrays' buffers, not `tobytes()` copies: a memory-mapped column is read, not copied.
    for f in ("subject_id", "sex", "birth_day", "split", "offsets", "day", "visit", "pos"):
      h.update(np.ascontiguousarray(getattr(self, f)))
    h.update("\n".join(self.codes).encode())
    h.update(np.ascontiguousarray(self.code))
    return h.hexdigest()[:16]

  def subset_fingerprint(self, patients: np.ndarray) -> str:
    """`self.select(patients).used_codes_only().fingerprint()`, without the copy: the same bytes
    are hashed a chunk of patients at a time (a million patients' copy took 3 GB)."""
    idx = np.asarray(patients, np.int64)
    lens = self.lengths[idx]
    offsets = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(lens, out=offsets[1:])
    step = _PATIENT_CHUNK
    chunks = [(idx[lo:lo + step], lens[lo:lo + step]) for lo in range(0, len(idx), step)]
    events = lambda column: (column[gather_ranges(self.offsets[p], n)] for p, n in chunks)
    used = np.zeros(len(self.codes), bool)
    for code in events(self.code):
      used[code] = True
    remap = (np.cumsum(used) - 1).astype(self.code.dtype)  # used_codes_only's new indices
    h = hashlib.sha256()
    for f in ("subject_id", "sex", "birth_day", "split"):
      h.update(np.ascontiguousarray(getattr(self, f)[idx]).tobytes())
    h.update(offsets.tobytes())
    for f in ("day", "visit", "pos"):
      for part in events(getattr(self, f)):
        h.update(np.ascontiguousarray(part).tobytes())
    h.update("\n".join(self.codes[used]).encode())
    for code in events(self.code):
      h.update(remap[code].tobytes())
    return h.hexdigest()[:16]

  def save(self, path: str | Path) -> Path:
    """Writes the dataset as one compressed `.npz` (atomic)."""
    return io.atomic_savez(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

  def save_mapped(self, path: str | Path) -> Path:
    """Writes the dataset as a directory of uncompressed `.npy` files, one per field (atomic;
    process 0 alone of several), which `open_mapped` maps instead of reading whole."""
    path = Path(path)
    if io.writes_files():
      with io.atomic_directory(path, overwrite=True) as tmp:  # an unfinished stage's is replaced
        for f in dataclasses.fields(self):
          np.save(tmp / f"{f.name}.npy", getattr(self, f.name), allow_pickle=False)
    return path

  @classmethod
  def open_mapped(cls, path: str | Path) -> "PatientEvents":
    """The dataset `save_mapped` wrote, memory-mapped: a stage pages in only the events it reads,
    so the later stages of a large dataset do not hold it in memory. Copy-on-write (`mmap_mode
    "c"`): an array written to in place changes this process's copy, never the file. Not
    validated again: `save_mapped` writes only datasets `build` validated."""
    path = Path(path)
    try:
      arrays = {f.name: np.load(path / f"{f.name}.npy", mmap_mode="c", allow_pickle=False)
                for f in dataclasses.fields(cls)}
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: cannot read a saved dataset ({e}); delete it to rebuild") from e
    return cls.build(source=str(path), checked=True, **arrays)

  @classmethod
  def load(cls, path: str | Path) -> "PatientEvents":
    try:
      arrays = io.load_npz(path)
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: cannot read a saved dataset ({e}); delete it to rebuild") from e
    arrays.pop("age", None)
    return cls.build(source=str(path), **arrays)

  def summary(self) -> dict[str, float]:
    lens = self.lengths
    types = self.code_type[self.code] if self.num_events else np.zeros(0, np.int8)
    return dict(
        patients=self.num_patients, events=self.num_events, distinct_codes=int((self.code_counts() > 0).sum()),
        median_events=float(np.median(lens)) if len(lens) else 0.0,
        p95_events=float(np.percentile(lens, 95)) if len(lens) else 0.0,
        **{f"events_{t.name.lower()}": int((types == t).sum()) for t in CodeType if (types == t).any()},
        **{f"patients_{s}": int((self.split == i).sum()) for i, s in enumerate(SPLITS)})


_CHECK_CHUNK = 1 << 22  # events per step of the whole-dataset checks
_PATIENT_CHUNK = 1 << 16  # patients per step of `subset_fingerprint`


def _flatnonzero_chunked(a: np.ndarray, test) -> np.ndarray:
  """np.flatnonzero(test(a)), a chunk at a time."""
  parts = [lo + np.flatnonzero(test(a[lo:lo + _CHECK_CHUNK])) for lo in range(0, len(a), _CHECK_CHUNK)]
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _ages(day: np.ndarray, birth_day: np.ndarray, offsets: np.ndarray,
          chunk_events: int = 1 << 22) -> np.ndarray:
  """float32 [E]: each event's age in years, a bounded chunk of patients at a time (a whole-array
  expression took four E-sized temporaries, 2 GB at 67 million events)."""
  age = np.empty(len(day), np.float32)
  bounds = np.unique(np.concatenate([
      np.searchsorted(offsets, np.arange(0, len(day), chunk_events), side="right") - 1,
      [len(offsets) - 1]]))
  for a, b in zip(bounds[:-1], bounds[1:]):
    s, e = offsets[a], offsets[b]
    patient = np.repeat(np.arange(a, b), np.diff(offsets[a:b + 1]))
    age[s:e] = ((day[s:e] - birth_day[patient]) / DAYS_PER_YEAR).astype(np.float32)
  return age


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of `arange(s, s + n)` for each (s, n), without a Python loop."""
  lengths = np.asarray(lengths, np.int64)
  total = int(lengths.sum())
  if total == 0:
    return np.zeros(0, np.int64)
  run_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
  return np.repeat(np.asarray(starts, np.int64), lengths) + (np.arange(total) - run_start)


def assign_splits(subject_id: np.ndarray, fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> np.ndarray:
  """int8 split per subject, a pure function of (subject id, seed): reordering, subsetting or
  adding patients never moves an existing patient to another split."""
  f = np.asarray(fractions, np.float64)
  if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
    raise DataError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
  u = _hash_uniform(np.asarray(subject_id, np.uint64), seed)
  return np.searchsorted(np.cumsum(f)[:2], u, side="right").astype(np.int8)


def _hash_uniform(x: np.ndarray, seed: int) -> np.ndarray:
  """splitmix64 of (x, seed) mapped to [0, 1)."""
  with np.errstate(over="ignore"):
    z = x + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
  return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def concat(datasets: Sequence[PatientEvents]) -> PatientEvents:
  """Concatenates datasets, merging their code tables (subject ids must not collide)."""
  codes = np.unique(np.concatenate([d.codes for d in datasets]))
  parts = dict(subject_id=[], sex=[], birth_day=[], split=[], code=[], day=[], visit=[], pos=[])
  lens = []
  for d in datasets:
    for k in ("subject_id", "sex", "birth_day", "split", "day", "visit", "pos"):
      parts[k].append(getattr(d, k))
    parts["code"].append(np.searchsorted(codes, d.codes)[d.code])
    lens.append(d.lengths)
  offsets = np.concatenate([[0], np.cumsum(np.concatenate(lens))])
  return PatientEvents.build(offsets=offsets, codes=codes, source="concat",
                             **{k: np.concatenate(v) for k, v in parts.items()})
