"""Conditional generation of held-out patients: truncate, prompt, complete, save.

"The last T codes" of a patient are their last T events (the paper's "truncate the last T medical
codes in each sequence"). A patient needs at least T + `min_prompt_events` events to be evaluated;
shorter patients are skipped (and counted in the metrics) rather than given a shorter T, so every
evaluated true continuation has exactly T events and every prompt has some history.

All datasets here are `PatientEvents`; the generator's output may use its own code table (for
example with `<unk>`), so comparisons go through code strings or a merged table (`common_codes`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from rltf_jax.data.events import SPLITS, PatientEvents, gather_ranges
from rltf_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def eligible(dataset: PatientEvents, truncate_events: int, min_prompt_events: int = 1) -> np.ndarray:
  """bool [P]: patients long enough to keep `min_prompt_events` after truncating `truncate_events`."""
  if truncate_events < 1:
    raise ConfigError(f"eval.truncate_events must be at least 1, got {truncate_events}")
  if min_prompt_events < 0:
    raise ConfigError(f"eval.min_prompt_events must be non-negative, got {min_prompt_events}")
  return dataset.lengths >= truncate_events + min_prompt_events


def sample_patients(dataset: PatientEvents, split: str, num: int, seed: int, truncate_events: int,
                    min_prompt_events: int = 1) -> tuple[np.ndarray, dict]:
  """Indices (sorted) of up to `num` eligible patients of `split`, drawn uniformly with `seed`
  (`num` <= 0 takes all), and counts saying how many were available and skipped."""
  in_split = dataset.split == SPLITS.index(split)
  ok = in_split & eligible(dataset, truncate_events, min_prompt_events)
  pool = np.flatnonzero(ok)
  if len(pool) == 0:
    raise DataError(
        f"no {split} patient has at least {truncate_events + min_prompt_events} events "
        f"({int(in_split.sum())} {split} patients); lower eval.truncate_events or use more data")
  if 0 < num < len(pool):
    pool = np.sort(np.random.default_rng(seed).choice(pool, num, replace=False))
  counts = dict(split_patients=int(in_split.sum()), too_short=int((in_split & ~ok).sum()),
                selected=int(len(pool)))
  return pool, counts


def truncate(dataset: PatientEvents, truncate_events: int) -> tuple[PatientEvents, PatientEvents]:
  """(prompts, true continuations): each patient's events without and with only its last
  `truncate_events` events. Patients shorter than that give an empty prompt."""
  lens = dataset.lengths
  keep = np.maximum(lens - truncate_events, 0)
  return (_slice_events(dataset, dataset.offsets[:-1], keep),
          _slice_events(dataset, dataset.offsets[:-1] + keep, lens - keep))


def head(continuations: PatientEvents, num_events: int) -> PatientEvents:
  """Each row's first `num_events` events: a generated continuation length-matched to the true
  one (which has exactly T events), so that a longer generation cannot find the target, or add
  counts, by its length alone. Shorter rows are kept whole."""
  return _slice_events(continuations, continuations.offsets[:-1],
                       np.minimum(continuations.lengths, int(num_events)))


def _slice_events(ds: PatientEvents, starts: np.ndarray, lengths: np.ndarray) -> PatientEvents:
  offsets = np.zeros(ds.num_patients + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  ev = gather_ranges(starts, lengths)
  return dataclasses.replace(ds, offsets=offsets, code=ds.code[ev], day=ds.day[ev],
                             visit=ds.visit[ev], pos=ds.pos[ev], age=ds.age[ev])


# ---------------------------------------------------------------- code tables
def common_codes(*datasets: PatientEvents) -> np.ndarray:
  """The sorted union of the datasets' code tables."""
  return np.unique(np.concatenate([np.asarray(d.codes, str) for d in datasets]))


def recode(ds: PatientEvents, codes: np.ndarray) -> PatientEvents:
  """`ds` re-indexed onto the code table `codes` (sorted; must contain every code of `ds`)."""
  at = np.searchsorted(codes, ds.codes)
  at = np.minimum(at, len(codes) - 1)
  if len(ds.codes) and not np.array_equal(codes[at], ds.codes):
    raise DataError("recode: the target code table lacks some of the dataset's codes")
  return dataclasses.replace(ds, code=at[ds.code].astype(np.int32) if ds.num_events else ds.code,
                             codes=codes)


def code_sequences(ds: PatientEvents) -> list[list[str]]:
  """Each patient's codes as a list of strings (for ROUGE and exact matching)."""
  strings = ds.codes[ds.code].tolist()
  return [strings[a:b] for a, b in zip(ds.offsets[:-1].tolist(), ds.offsets[1:].tolist())]


def join(prompts: PatientEvents, continuations: PatientEvents) -> PatientEvents:
  """Per-patient concatenation prompt + continuation on a merged code table (row i with row i)."""
  _check_rows(prompts, continuations, "continuations")
  codes = common_codes(prompts, continuations)
  a, b = recode(prompts, codes), recode(continuations, codes)
  patient = np.concatenate([a.event_patient(), b.event_patient()])
  source = np.concatenate([np.zeros(a.num_events, np.int64), np.ones(b.num_events, np.int64)])
  order = np.argsort(patient * 2 + source, kind="stable")  # stable: keeps each part's order
  cat = lambda f: np.concatenate([getattr(a, f), getattr(b, f)])[order]
  offsets = a.offsets + b.offsets
  return dataclasses.replace(a, offsets=offsets, code=cat("code"), day=cat("day"),
                             visit=cat("visit"), pos=cat("pos"), age=cat("age"))


def _check_rows(prompts: PatientEvents, out: PatientEvents, what: str) -> None:
  if out.num_patients != prompts.num_patients or not np.array_equal(out.subject_id, prompts.subject_id):
    raise DataError(
        f"{what}: {out.num_patients} rows for {prompts.num_patients} prompts, or subject ids out of "
        "order; a generator must return row i as the continuation of prompt row i")


# ---------------------------------------------------------------- generation with a cache
def complete_cached(generator, prompts: PatientEvents, *, max_new_events: int, seed: int,
                    path: Path) -> tuple[PatientEvents, float]:
  """The generator's continuations of `prompts`, read from `path` when a previous run saved them
  for the same prompts, else generated and saved atomically. Returns (continuations, seconds
  spent generating; 0 when read back)."""
  path = Path(path)
  if path.exists():
    cached = PatientEvents.load(path)
    if cached.num_patients == prompts.num_patients and np.array_equal(cached.subject_id, prompts.subject_id):
      log.info("reusing %d generated continuations from %s", cached.num_patients, path)
      return cached, 0.0
    raise DataError(f"{path} holds continuations of other patients; delete it to regenerate")
  start = time.perf_counter()
  out = generator.complete(prompts, max_new_events=max_new_events, seed=seed)
  seconds = time.perf_counter() - start
  _check_rows(prompts, out, f"generator {getattr(generator, 'name', type(generator).__name__)!r}")
  if out.num_events and out.lengths.max() > max_new_events:
    raise DataError(f"generator returned {int(out.lengths.max())} events for a patient; "
                    f"max_new_events is {max_new_events}")
  out.save(path)
  return out, seconds
