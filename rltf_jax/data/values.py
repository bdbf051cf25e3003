"""Tokens that carry a measurement's value: `<code>//Q<k>of<n>` quantile bins (`data.value_bins`).

As CEHR-GPT and ETHOS do, a numeric row (MEDS `numeric_value`) of a measurement family (labs and
other; a diagnosis, procedure or medication keeps its bare code) becomes its code with the value's
quantile bin appended: `LAB/50912//mg/dL//Q3of5` is a creatinine in the middle fifth.

Binning, per code:
- The edges are the `k/n` quantiles, k = 1..n-1, of that code's finite values in the training split
  only (numpy's default linear interpolation), so neither validation nor test values shape the
  tokens. Values of any split are then binned by those edges: bin k holds values v with
  edge[k-1] <= v < edge[k] (values equal to an edge go to the upper bin); values below the first
  edge are Q1, above the last Q<n>, whatever their split.
- A code with fewer than `data.value_min_count` training values keeps its bare token on every row
  (its quantiles would be noise); so does every row without a value (null or NaN).
- Edges that coincide (a value repeated across a quantile) leave the bins between them empty.
`n = 0` (off) keeps every row's bare code.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from rltf_jax.data.codes import FAMILIES, code_families
from rltf_jax.data.events import TRAIN, PatientEvents
from rltf_jax.errors import ConfigError

VALUE_FAMILIES = ("labs", "other")  # measurements; a dose or a count on other rows is not binned


def bin_token(code: str, k: int, n: int) -> str:
  return f"{code}//Q{k}of{n}"


def value_tokens(ds: PatientEvents, values: np.ndarray, bins: int, min_count: int
                 ) -> tuple[PatientEvents, dict[str, int]]:
  """(dataset whose numeric measurement rows carry bin tokens, counts for the data summary).

  `values` is float64 [E] aligned with `ds`'s events (NaN: no value). The counts: `binned_codes`
  (codes given bins), `binned_events`, `bare_numeric_events` (numeric rows of codes with too few
  training values).
  """
  if bins == 1 or bins < 0:
    raise ConfigError(f"data.value_bins must be 0 (off) or at least 2, got {bins}")
  if len(values) != ds.num_events:
    raise ValueError(f"{len(values)} values for {ds.num_events} events")
  numeric = np.isfinite(values)
  measured = np.isin(code_families(ds.codes), [list(FAMILIES).index(f) for f in VALUE_FAMILIES])
  numeric &= measured[ds.code] if ds.num_events else numeric
  stats = dict(binned_codes=0, binned_events=0, bare_numeric_events=int(numeric.sum()))
  if bins == 0 or not numeric.any():
    return ds, stats
  train = (ds.split == TRAIN)[ds.event_patient()]
  bin_of = np.zeros(ds.num_events, np.int64)  # 0: bare token
  # Numeric rows grouped by code (one sort), so the loop runs once per code over its own rows.
  rows = np.flatnonzero(numeric)
  rows = rows[np.argsort(ds.code[rows], kind="stable")]
  _, starts = np.unique(ds.code[rows], return_index=True)
  for group in np.split(rows, starts[1:]):
    fit = values[group[train[group]]]
    if len(fit) < min_count:
      continue
    edges = np.quantile(fit, np.arange(1, bins) / bins)
    bin_of[group] = np.searchsorted(edges, values[group], side="right") + 1
    stats["binned_codes"] += 1
  binned = bin_of > 0
  stats.update(binned_events=int(binned.sum()), bare_numeric_events=int((numeric & ~binned).sum()))
  if not binned.any():
    return ds, stats
  # New code table: every old code (bare rows still use it) plus the bin tokens that occur.
  strings = ds.codes[ds.code].astype(object)
  strings[binned] = [bin_token(ds.codes[c], k, bins) for c, k in zip(ds.code[binned], bin_of[binned])]
  codes, code = np.unique(np.concatenate([strings.astype(str), ds.codes]), return_inverse=True)
  out = dataclasses.replace(ds, codes=codes, code=code[:ds.num_events].astype(np.int32))
  return out.used_codes_only(), stats
