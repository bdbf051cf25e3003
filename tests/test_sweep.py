"""Sweep configs and the combined table (the runs themselves are the pipeline's, tested there)."""

import json

import pytest

from conftest import REPO
from rltf_jax import sweep
from rltf_jax.errors import ConfigError


def test_table2_ablation_sweep_has_the_papers_grid():
  cfg, runs, name = sweep.load_sweep(str(REPO / "configs/sweeps/table2_ablation.py") + ":smoke")
  assert name == "table2_ablation" and cfg.cohort == "scd" and cfg.size == "smoke"
  grid = {(r["overrides"].get("rltf.num_pairs"), r["overrides"].get("rltf.positive_fraction"),
           r["overrides"]["methods"]) for r in runs}
  expected = {(n, p, ("rltf",)) for n in (100, 1000, 10000) for p in (0.5, 1.0)}
  assert expected | {(10000, 0.5, ("sft",)), (None, None, ("base",))} == grid
  changed = sweep.apply_overrides(cfg, runs[1]["overrides"])
  assert changed.rltf.num_pairs == 100 and cfg.rltf.num_pairs != 100  # the base config is untouched
  with pytest.raises(ConfigError, match="no field 'num_pair'"):
    sweep.apply_overrides(cfg, {"rltf.num_pair": 5})


def test_all_cohorts_sweep_covers_every_cohort():
  from rltf_jax.data.cohorts import COHORTS
  cfg, runs, _ = sweep.load_sweep(str(REPO / "configs/sweeps/all_cohorts.py"))
  assert [r["overrides"]["cohort"] for r in runs] == list(COHORTS)
  assert set(cfg.methods) == {"base", "rltf", "sft", "lstm", "halo"}


def test_combined_table_sets_the_papers_numbers_beside_ours(tmp_path):
  rows = [dict(run="rl-n10000-p0.5", cohort="scd", abbrev="SCD", method="rltf", num_pairs=10000,
               positive_fraction=0.5, precision=0.5, recall=0.25, f1=0.3333, rouge1=0.2,
               auroc_real=0.9, auroc_synthetic=0.8, auroc_augmented=0.85,
               true_continuations_with_target=4, metrics="m.json")]
  path = sweep.write_table(tmp_path, "table2_ablation", rows, [("sft", "boom")])
  text = path.read_text()
  assert "0.41 / 0.61 / 0.372" in text          # Table 2, RL N=10000 P=0.5
  assert "0.50/0.25/0.33" in text                # Table 5, SCD, DPO
  assert "`sft`: boom" in text
  table = json.loads((tmp_path / "table.json").read_text())
  assert table["rows"][0]["paper_auroc_synthetic"] == pytest.approx(0.523485)
