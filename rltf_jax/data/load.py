"""One entry point from a data config to a `PatientEvents` with train/valid/test splits."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rltf_jax.data import families, meds, mimic, simulate, values
from rltf_jax.data.events import PatientEvents, assign_splits
from rltf_jax.errors import ConfigError, DataError

SOURCES = ("simulator", "meds", "mimic")
log = logging.getLogger("rltf_jax")


def load_dataset(cfg) -> PatientEvents:
  """Reads `cfg.source` ("simulator", "meds" or "mimic") and assigns splits; see `load_with_report`."""
  return load_with_report(cfg)[0]


def load_with_report(cfg) -> tuple[PatientEvents, dict]:
  """The dataset of data config `cfg`, and what loading dropped or binned (for the data summary).

  Splits given by the source (MEDS `metadata/subject_splits.parquet`) are kept; otherwise each
  patient's split is a hash of their subject id and `cfg.split_seed` (see `assign_splits`). Then
  only the code families of `cfg.include` are kept (`families.py`; the report's `dropped_events`
  counts the rest per family), and, with labs included, numeric MEDS rows become value tokens
  binned on the training split (`values.py`; `value_tokens` in the report).
  """
  source = cfg.source
  include = families.check_include(cfg.include)
  value = None
  if source == "simulator":
    ds = simulate.simulate(simulator_config(cfg), num_patients=cfg.num_patients, seed=cfg.seed)
    has_splits = False
  elif source in ("meds", "mimic"):
    if not cfg.path:
      raise ConfigError(f"data.source={source!r} needs data.path, the {source.upper()} directory")
    if not Path(cfg.path).exists():
      raise DataError(f"{cfg.path}: no such directory (data.path for data.source={source!r})")
    if source == "meds":
      ds, has_splits, value = meds.read_meds_values(cfg.path,
                                                    bare_code_system=cfg.bare_code_system or None)
    else:
      if "labs" in include:
        raise ConfigError("data.include: 'labs' with data.source='mimic': the MIMIC-IV reader reads "
                          f"{', '.join(mimic.EVENT_TABLES)}, not labevents; convert MIMIC-IV with a "
                          "MEDS ETL that writes LAB//... rows and read it with data.source='meds'")
      ds, has_splits = mimic.read_mimic(cfg.path), False
  else:
    raise ConfigError(f"unknown data.source {source!r}; choose one of {', '.join(SOURCES)}")
  if ds.num_patients == 0:
    raise DataError(f"data source {source!r} produced no patients")
  if not has_splits:
    ds = ds.with_splits(assign_splits(ds.subject_id, tuple(cfg.split_fractions), cfg.split_seed))
  splits = _splits_used(ds, has_splits, cfg)
  events_before = ds.num_events
  ds, value, dropped = families.keep_families(ds, include, value)
  if ds.num_events == 0 and events_before:
    held = ", ".join(f"{f} {n:,}" for f, n in dropped.items() if n)
    raise DataError(f"data.include ({', '.join(include)}) keeps none of the source's "
                    f"{events_before:,} events (it holds {held}); include those families, e.g. "
                    f"--config.data.include=\"({', '.join(repr(f) for f, n in dropped.items() if n)},)\"")
  report = dict(dropped_events=dropped, splits=splits)
  if "labs" in include and value is not None and np.isfinite(value).any():
    ds, report["value_tokens"] = values.value_tokens(ds, value, cfg.value_bins, cfg.value_min_count)
  return ds, report


def _splits_used(ds: PatientEvents, has_splits: bool, cfg) -> dict:
  """Which splits the run uses, said aloud when they are not the config's: a dataset's own
  `subject_splits.parquet` wins over `data.split_fractions`, and a MEDS folder without one gets
  hash splits from the fractions (a warning either way; the data summary records the counts)."""
  counts = [int((ds.split == k).sum()) for k in range(3)]
  fractions = [round(c / max(ds.num_patients, 1), 4) for c in counts]
  used = dict(source="dataset" if has_splits else "data.split_fractions", patients=counts,
              fractions=fractions)
  if has_splits and tuple(round(f, 2) for f in fractions) != tuple(round(float(f), 2) for f in cfg.split_fractions):
    log.warning("data.split_fractions %s is not used: the dataset's metadata/subject_splits.parquet "
                "gives the splits (train/tuning/held_out %s patients, fractions %s)",
                tuple(cfg.split_fractions), counts, fractions)
  if not has_splits and cfg.source == "meds":
    log.warning("%s has no metadata/subject_splits.parquet: splits assigned by subject hash from "
                "data.split_fractions %s and data.split_seed %s (%s patients)", cfg.path,
                tuple(cfg.split_fractions), cfg.split_seed, counts)
  return used


def simulator_config(cfg):
  """The simulator parameters a draw from data config `cfg` uses: `cfg.simulator` with every
  Table-4 cohort raised to `cfg.min_cohort_percent` (a derived setting, so it is applied here, after
  any override of either field)."""
  return simulate.raise_rare_cohorts(cfg.simulator, cfg.min_cohort_percent)
