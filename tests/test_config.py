"""Configs: derived settings apply after command-line and sweep overrides."""

import subprocess
import sys

from configs import base, simulator
from conftest import REPO
from rltf_jax import sweep
from rltf_jax.data.cohorts import COHORTS
from rltf_jax.data.load import load_dataset


def test_cohort_floor_applies_at_draw_time_after_overrides():
  """`data.min_cohort_percent` set on the command line or by a sweep changes the draw."""
  cfg = base.get_config("smoke")   # floor 5%
  scd = COHORTS["scd"].codes
  raised = sweep.apply_overrides(cfg, {"data.num_patients": 400})
  paper = sweep.apply_overrides(cfg, {"data.num_patients": 400, "data.min_cohort_percent": 0.0})
  # The config records what was asked for; the simulator's table keeps the paper's frequency.
  assert paper.data.min_cohort_percent == 0.0
  assert paper.data.simulator.conditions.scd.prevalence == raised.data.simulator.conditions.scd.prevalence
  assert load_dataset(raised.data).patients_with_any(scd).sum() == 20   # 5% of 400
  assert load_dataset(paper.data).patients_with_any(scd).sum() == 1     # 0.036% of 400, at least 1


def test_simulator_config_matches_table4_and_imports_no_library():
  assert simulator.TABLE4_PERCENT == {n: c.paper_frequency_percent for n, c in COHORTS.items()}
  assert list(simulator.TABLE4_PERCENT) == list(COHORTS)
  code = ("import sys; import configs.simulator; "
          "print(sorted(m for m in sys.modules if m.startswith('rltf_jax')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]"
