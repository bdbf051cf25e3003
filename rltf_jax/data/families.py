"""Which code families become events (`data.include`).

A family is a group of code types (`codes.FAMILIES`: diagnoses, procedures, medications, labs,
other), decided by a code's system prefix. The paper's records hold diagnoses, procedures and
medications, the default; a foreign MEDS export with lab or bookkeeping rows (`LAB//...`,
`OTHER/...`) then gives the same kind of sequences without editing it. Events of other families
are dropped and counted per family. A patient left without events is kept (with none), as MIMIC
patients without admissions are. Visit indices are renumbered densely within each patient after a
drop, so a visit that held only dropped events leaves no gap (the model's visit embedding counts
visits of the kept record).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rltf_jax.data.codes import FAMILIES, code_families
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError


def check_include(include: Sequence[str]) -> tuple[str, ...]:
  """`include` as a tuple of family names, or a `ConfigError` naming the unknown one."""
  if isinstance(include, str):  # ("labs") on a command line is a string, not a tuple
    include = (include,)
  include = tuple(str(f) for f in include)
  unknown = [f for f in include if f not in FAMILIES]
  if unknown:
    raise ConfigError(f"data.include: unknown code family {unknown[0]!r}; choose from "
                      f"{', '.join(FAMILIES)}")
  if not include:
    raise ConfigError("data.include is empty; name at least one code family "
                      f"({', '.join(FAMILIES)})")
  return include


def keep_families(ds: PatientEvents, include: Sequence[str], values: np.ndarray | None = None
                  ) -> tuple[PatientEvents, np.ndarray | None, dict[str, int]]:
  """(dataset with only `include`'s events, their values, events dropped per excluded family).

  When nothing is dropped the dataset is returned unchanged (the same object), so a source that
  emits only included families (the simulator) is byte-identical to reading it without the filter.
  """
  include = check_include(include)
  names = list(FAMILIES)
  per_code = code_families(ds.codes)
  counts = np.bincount(per_code, weights=ds.code_counts(), minlength=len(names))
  dropped = {n: int(counts[i]) for i, n in enumerate(names) if n not in include}
  if not any(dropped.values()):
    return ds, values, dropped
  family = per_code[ds.code]
  keep = np.isin(family, [names.index(f) for f in include])
  patient = ds.event_patient()[keep]
  offsets = np.zeros(ds.num_patients + 1, np.int64)
  np.cumsum(np.bincount(patient, minlength=ds.num_patients), out=offsets[1:])
  used, code = np.unique(ds.code[keep], return_inverse=True)  # the code table keeps its order
  kept = dataclasses.replace(ds, offsets=offsets, code=code.astype(np.int32), day=ds.day[keep],
                             visit=_dense_visits(patient, ds.visit[keep]), pos=ds.pos[keep],
                             age=ds.age[keep], codes=ds.codes[used])
  kept.validate("events of data.include")
  return kept, (values[keep] if values is not None else None), dropped


def _dense_visits(patient: np.ndarray, visit: np.ndarray) -> np.ndarray:
  """0-based rank of each event's visit among its patient's kept visits (rows sorted by both)."""
  if len(visit) == 0:
    return visit.astype(np.int32)
  new = np.ones(len(visit), bool)
  new[1:] = (patient[1:] != patient[:-1]) | (visit[1:] != visit[:-1])
  count = np.cumsum(new)
  first = np.ones(len(visit), bool)
  first[1:] = patient[1:] != patient[:-1]
  base = np.maximum.accumulate(np.where(first, count, 0))
  return (count - base).astype(np.int32)
