"""Shared fixtures. Tests that read ../shared skip with a message naming the path when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# On a GPU, XLA's scatter-adds (embedding gradients) are atomic and their order varies between runs;
# Adam turns such last-bit differences on near-zero gradients into visible ones, so the exact-resume
# tests need deterministic ops there. The CPU backend ignores the flag.
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_gpu_deterministic_ops=true") if f)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RLTF_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
  """A path under ../shared, or a skip naming it when it is absent."""
  p = SHARED.joinpath(*parts)
  if not p.exists():
    pytest.skip(f"{p} is absent (tests reading ../shared need the shared folder beside the checkout)")
  return p


@pytest.fixture
def tiny_dataset():
  """Three patients, hand-written, with a target code (D573) in the second."""
  from rltf_jax.data.events import PatientEvents
  codes = ["ICD10CM/D573", "ICD10CM/E119", "ICD10CM/I10", "CCSPX/47", "ATC/A10BA02"]
  # patient 0: E119 I10 | A10BA02 ; patient 1: I10 D573 | 47 D573 ; patient 2: (no events)
  return PatientEvents.build(
      subject_id=[10, 11, 12], sex=[0, 1, -1], birth_day=[0, 3652, 7305],
      offsets=[0, 3, 7, 7], code=[1, 2, 4, 2, 0, 3, 0],
      day=[10000, 10000, 10400, 12000, 12000, 12100, 12100],
      visit=[0, 0, 1, 0, 0, 1, 1], pos=[11, 11, 11, 23, 23, 21, 21], codes=codes,
      split=[0, 0, 2])


ENRICHED_SWEEP = """
from rltf_jax.configs import base

def get_config(arg=None):
  cfg = base.get_config("smoke", cohort="shock")
  cfg.methods = ("base", "rltf")
  cfg.data.min_cohort_percent = 0.0   # the population at the paper's prevalence
  cfg.data.enrich.patients = 30_000   # and an enriched sample beside it
  cfg.data.enrich.workers = 1
  cfg.eval.num_test_patients = 120
  return cfg

def get_sweep(arg=None):
  return [dict(name="shock", run_name="", overrides={})]
"""


@pytest.fixture(scope="session")
def enriched_sweep(tmp_path_factory):
  """(sweep config path, work directory): a one-cohort smoke sweep (Shock, base and RLTF) on a
  population at the paper's prevalence with a cohort-enriched sample; finished once per session
  and shared by the tests that read a finished run (reproduction, synthesize)."""
  import sys
  sys.path.insert(0, str(REPO))
  from rltf_jax import sweep
  root = tmp_path_factory.mktemp("enriched_sweep")
  spec = root / "one_cohort.py"
  spec.write_text(ENRICHED_SWEEP)
  work = root / "work"
  assert sweep.run_sweep(str(spec), str(work)) == 0
  return spec, work
