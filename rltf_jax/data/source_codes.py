"""How a MEDS source spelled its codes, kept with the data and applied on the way out.

Inside the project every code is one canonical string (`codes.normalize_code`): the MIMIC-IV MEDS
ETL's `DIAGNOSIS//ICD//10//A419` is `ICD10CM/A419`, its `MEDICATION//START//Aspirin` is
`DRUG/Aspirin`. A user's cohort files and ACES tasks are written in the source's spelling, and a
synthetic dataset made from the source must be readable by the same tasks, so the data stage keeps
a `SourceCodes` beside the dataset (`source_codes.json`):

- `spellings`: internal code -> the source strings that became it, the most frequent first (two
  spellings of one code, `ICD10CM/E11.9` and `E119`, are one internal code); `spelling(code)` is
  what a writer puts back. A value-bin token (`values.bin_token`: `<code>//Q3of5`) is written as its
  code's spelling (the bin is not a source value).
- `other`: the source strings that are not events (birth, sex, stay bookkeeping), for messages;
  a sex row is written in the source's spelling of it (`SEX//F`), when the source has one.
- `columns`: which extension columns the source has (`visit`, `place_of_service`); what a source
  lacks, a synthetic dataset made from it does not invent.
- `static_rows`: rows without a time, and how many of them the reader uses (sex codes) or drops.

`SourceCodes.identity(codes)` stands for sources whose spelling is the internal one (the simulator,
the MIMIC-IV CSV reader).
"""

from __future__ import annotations

import collections
import dataclasses
import re
from pathlib import Path
from typing import Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from rltf_jax import io
from rltf_jax.errors import DataError

EXTENSION_COLUMNS = ("visit", "place_of_service")
_VALUE_BIN = re.compile(r"^(.*)//Q\d+of\d+$")
_SEX_WRITTEN = {"GENDER//F": "F", "GENDER//M": "M"}  # what meds.write_meds writes


def _sex_of(raw: str) -> str | None:
  from rltf_jax.data import meds
  kind = meds._classify(raw, None)[0]
  return "F" if kind == meds._FEMALE else "M" if kind == meds._MALE else None


@dataclasses.dataclass(frozen=True)
class SourceCodes:
  spellings: Mapping[str, tuple[str, ...]]
  other: tuple[str, ...] = ()
  columns: Mapping[str, bool] = dataclasses.field(
      default_factory=lambda: dict.fromkeys(EXTENSION_COLUMNS, True))
  static_rows: Mapping[str, int] = dataclasses.field(default_factory=dict)

  @classmethod
  def identity(cls, codes: Iterable[str]) -> "SourceCodes":
    return cls({c: (c,) for c in codes})

  def spelling(self, code: str) -> str:
    """The source string of internal `code` (the code itself when the source never had it)."""
    found = self.spellings.get(code)
    if found:
      return found[0]
    if code in _SEX_WRITTEN:  # the writer's GENDER//F as the source spelled a female row
      spelled = [raw for raw in self.other if _sex_of(raw) == _SEX_WRITTEN[code]]
      if spelled:
        return spelled[0]
    m = _VALUE_BIN.match(code)
    if m and m.group(1) in self.spellings:
      return self.spellings[m.group(1)][0]
    return code

  def internal_of(self) -> dict[str, str]:
    """source string -> internal code, for every event spelling."""
    return {raw: code for code, raws in self.spellings.items() for raw in raws}

  def save(self, path: str | Path) -> Path:
    return io.atomic_write_json(Path(path), dict(spellings={k: list(v) for k, v in self.spellings.items()},
                                                 other=list(self.other), columns=dict(self.columns),
                                                 static_rows=dict(self.static_rows)))

  @classmethod
  def load(cls, path: str | Path) -> "SourceCodes":
    import json
    try:
      raw = json.loads(Path(path).read_text())
      return cls({k: tuple(v) for k, v in raw["spellings"].items()}, tuple(raw["other"]),
                 dict(raw["columns"]), dict(raw.get("static_rows", {})))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f"{path}: cannot read the source's code spellings ({e}); delete the data "
                      "stage's directory to rebuild it") from e


def scan_meds(path: str | Path, bare_code_system: str | None = "ICD10CM") -> SourceCodes:
  """The `SourceCodes` of a MEDS directory: one pass over the shards' `code` column (one shard in
  memory at a time), each distinct string classified as `meds.read_meds` classifies it."""
  from rltf_jax.data import meds  # meds reads; this module only names what it read
  counts: collections.Counter = collections.Counter()
  static: collections.Counter = collections.Counter()  # code -> rows without a time
  columns = dict.fromkeys(EXTENSION_COLUMNS, True)
  shards = sorted(p for p in (Path(path) / "data").rglob("*.parquet") if p.is_file())
  for shard in shards:
    try:
      names = pq.ParquetFile(shard).schema_arrow.names
      table = pq.read_table(shard, columns=["code", "time"])
    except (pa.ArrowInvalid, OSError, KeyError) as e:
      raise DataError(f"{shard}: cannot read its code column ({e})") from e
    for name in EXTENSION_COLUMNS:
      columns[name] = columns[name] and name in names
    vc = table.column("code").cast(pa.string()).value_counts()
    counts.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
    untimed = table.filter(table.column("time").is_null()).column("code").cast(pa.string()).value_counts()
    static.update(dict(zip(untimed.field("values").to_pylist(), untimed.field("counts").to_pylist())))
  counts.pop(None, None)
  if not shards:
    columns = dict.fromkeys(EXTENSION_COLUMNS, False)
  by_code: dict[str, list[tuple[int, str]]] = {}
  other = []
  for raw, n in counts.items():
    kind, code = meds._classify(raw, bare_code_system)
    if kind == meds._EVENT:
      by_code.setdefault(code, []).append((-n, raw))
    elif raw.strip():
      other.append(raw)
  spellings = {c: tuple(raw for _, raw in sorted(v)) for c, v in sorted(by_code.items())}
  used = sum(n for raw, n in static.items()
             if raw is not None and meds._classify(raw, bare_code_system)[0] in (meds._FEMALE, meds._MALE))
  total = sum(static.values())
  return SourceCodes(spellings, tuple(sorted(other)), columns,
                     dict(total=total, used_as_sex=used, dropped=total - used))
