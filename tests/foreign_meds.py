"""A test helper: a small MEDS dataset as another team's ETL writes it (the MIMIC-IV MEDS ETL's
code strings, its train/tuning/held_out splits, no `visit` or `place_of_service` column), and a
sepsis ACES predicates file over its ICD-9 and ICD-10 codes with a derived predicate."""

from __future__ import annotations

import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SEPSIS_ACES = """\
description: Sepsis, ICD-9-CM or ICD-10-CM, in the MIMIC-IV MEDS ETL's code strings
metadata:
  predicate: sepsis
predicates:
  sepsis_icd9:
    code: {regex: "^DIAGNOSIS//ICD//9//(038.*|99591|99592|78552)$"}
  sepsis_icd10:
    code: {any: [DIAGNOSIS//ICD//10//A419, DIAGNOSIS//ICD//10//A4151, DIAGNOSIS//ICD//10//R6521]}
  sepsis:
    expr: or(sepsis_icd9, sepsis_icd10)
"""

# Per subject: the diagnoses of each of two stays (the second a year later), and the split.
_BACKGROUND = ["DIAGNOSIS//ICD//10//I10", "DIAGNOSIS//ICD//10//E119", "DIAGNOSIS//ICD//9//4019",
               "DIAGNOSIS//ICD//9//25000", "DIAGNOSIS//ICD//10//J189", "DIAGNOSIS//ICD//10//N179"]
SEPSIS_SUBJECTS = {3: "DIAGNOSIS//ICD//10//A419", 7: "DIAGNOSIS//ICD//9//03849",
                   11: "DIAGNOSIS//ICD//9//78552", 15: "DIAGNOSIS//ICD//10//A4151",
                   19: "DIAGNOSIS//ICD//9//0389", 23: "DIAGNOSIS//ICD//9//99592"}
NUM_SUBJECTS = 30


def split_of(subject: int) -> str:
  return "held_out" if subject % 5 == 4 else "tuning" if subject % 10 == 8 else "train"


def write(root: Path, num_subjects: int = NUM_SUBJECTS) -> Path:
  """The dataset under `root` (data/0.parquet, data/1.parquet, metadata/); returns `root`."""
  rows = []
  day0 = datetime.datetime(2150, 1, 1)
  for s in range(1, num_subjects + 1):
    rows.append((s, None, "GENDER//F" if s % 2 else "GENDER//M", None))
    rows.append((s, datetime.datetime(2100 - s, 6, 1), "MEDS_BIRTH", None))
    for stay in range(2):
      t = day0 + datetime.timedelta(days=365 * stay + 7 * s, hours=8)
      rows.append((s, t, "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", None))
      for k in range(3):
        rows.append((s, t, _BACKGROUND[(s + stay + 2 * k) % len(_BACKGROUND)], None))
      rows.append((s, t + datetime.timedelta(hours=2), "LAB//50912//mg/dL", 0.5 + 0.1 * (s % 13)))
      rows.append((s, t + datetime.timedelta(hours=3), "MEDICATION//START//Aspirin", None))
      rows.append((s, t + datetime.timedelta(days=2), "MEDICATION//STOP//Aspirin", None))
      if stay == 1 and s in SEPSIS_SUBJECTS:
        rows.append((s, t + datetime.timedelta(days=1), SEPSIS_SUBJECTS[s], None))
      rows.append((s, t + datetime.timedelta(days=3), "HOSPITAL_DISCHARGE//HOME", None))
  (root / "data").mkdir(parents=True)
  (root / "metadata").mkdir()
  half = num_subjects // 2
  for shard, part in enumerate(([r for r in rows if r[0] <= half],
                                [r for r in rows if r[0] > half])):
    pq.write_table(pa.table({
        "subject_id": pa.array([r[0] for r in part], pa.int64()),
        "time": pa.array([r[1] for r in part], pa.timestamp("us")),
        "code": pa.array([r[2] for r in part], pa.string()),
        "numeric_value": pa.array([r[3] for r in part], pa.float32())}), root / "data" / f"{shard}.parquet")
  pq.write_table(pa.table({"subject_id": pa.array(range(1, num_subjects + 1), pa.int64()),
                           "split": [split_of(s) for s in range(1, num_subjects + 1)]}),
                 root / "metadata" / "subject_splits.parquet")
  return root


def raw_codes(root: Path) -> set[str]:
  """Every code string of a MEDS directory's shards."""
  return {c for p in sorted((root / "data").glob("*.parquet"))
          for c in pq.read_table(p, columns=["code"]).column("code").to_pylist()}


def recount(root: Path, pattern) -> set[int]:
  """Subjects with a code for which `pattern(code)` is true, counted from the raw shards."""
  found = set()
  for p in sorted((root / "data").glob("*.parquet")):
    t = pq.read_table(p, columns=["subject_id", "code"])
    found |= {s for s, c in zip(t.column("subject_id").to_pylist(), t.column("code").to_pylist())
              if pattern(c)}
  return found
