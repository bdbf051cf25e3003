"""Sweep configs and the combined table (the runs themselves are the pipeline's, tested there)."""

import json

import pytest

from conftest import REPO
from rltf_jax import sweep
from rltf_jax.errors import ConfigError


def test_table2_ablation_sweep_has_the_papers_grid():
  cfg, runs, name, seeds = sweep.load_sweep(str(REPO / "configs/sweeps/table2_ablation.py") + ":smoke")
  assert seeds == (0,)
  assert name == "table2_ablation" and cfg.cohort == "scd" and cfg.size == "smoke"
  grid = {(r["overrides"].get("rltf.num_pairs"), r["overrides"].get("rltf.positive_fraction"),
           r["overrides"]["methods"]) for r in runs}
  expected = {(n, p, ("rltf",)) for n in (100, 1000, 10000) for p in (0.5, 1.0)}
  assert expected | {(10000, 0.5, ("sft",)), (None, None, ("base",))} == grid
  changed = sweep.apply_overrides(cfg, runs[2]["overrides"])  # rl-n100-p0.5
  assert changed.rltf.num_pairs == 100 and cfg.rltf.num_pairs != 100  # the base config is untouched
  with pytest.raises(ConfigError, match="no field 'num_pair'"):
    sweep.apply_overrides(cfg, {"rltf.num_pair": 5})


def test_all_cohorts_sweep_covers_every_cohort():
  from rltf_jax.data.cohorts import COHORTS
  cfg, runs, _, _ = sweep.load_sweep(str(REPO / "configs/sweeps/all_cohorts.py"))
  assert [r["overrides"]["cohort"] for r in runs] == list(COHORTS)
  assert set(cfg.methods) == {"base", "rltf", "sft", "lstm", "halo"}


def test_combined_table_sets_the_papers_numbers_beside_ours(tmp_path):
  rows = [dict(run="rl-n10000-p0.5", seed=0, cohort="scd", abbrev="SCD", method="rltf", num_pairs=10000,
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


def test_seeds_offset_only_the_training_seeds_and_keep_seed_zero_as_the_run_itself():
  cfg, runs, name, seeds = sweep.load_sweep(str(REPO / "configs/sweeps/seeds.py") + ":ami,smoke")
  assert (name, cfg.cohort, cfg.size, seeds) == ("seeds", "ami", "smoke", (0, 1, 2, 3, 4, 5))
  expanded = sweep.with_seeds(cfg, runs, (0, 2))
  assert [(r["seed"], r.get("run_name")) for r in expanded] == [(0, ""), (2, "s2")]
  assert expanded[0].get("overrides", {}) == {}
  seeded = sweep.apply_overrides(cfg, expanded[1]["overrides"])
  for field in sweep.TRAINING_SEEDS:
    section, leaf = field.split(".")
    assert seeded[section][leaf] == cfg[section][leaf] + 2
  # the data, the pairs and the evaluation's patients stay the same for every seed
  for section, leaf in (("data", "seed"), ("data", "split_seed"), ("rltf", "split_seed"),
                        ("rltf", "insert_seed"), ("eval", "seed")):
    assert seeded[section][leaf] == cfg[section][leaf]
  # a run with overrides of its own keeps them, and its directory suffix gains the seed
  cfg2, runs2, _, _ = sweep.load_sweep(str(REPO / "configs/sweeps/table2_ablation.py") + ":smoke")
  run = sweep.with_seeds(cfg2, runs2[2:3], (1,))[0]  # rl-n100-p0.5
  assert run["run_name"] == "rl-n100-p0.5-s1" and run["overrides"]["rltf.num_pairs"] == 100


@pytest.mark.parametrize("bad", ["a,b", "-1", "1,1", ""])
def test_bad_seeds_are_a_config_error(bad):
  with pytest.raises(ConfigError, match="seeds must be"):
    sweep.parse_seeds(bad)


def test_table_summarises_over_seeds(tmp_path):
  def row(seed, f1, auroc):
    return dict(run="scd", seed=seed, cohort="scd", abbrev="SCD", method="rltf", num_pairs=10000,
                positive_fraction=0.5, precision=0.5, recall=0.5, f1=f1, rouge1=0.2, auroc_real=0.9,
                auroc_synthetic=auroc, auroc_augmented=0.8, true_continuations_with_target=20,
                metrics="m.json")
  rows = [row(0, 0.2, 0.7), row(1, 0.3, None), row(2, 0.4, 0.9), dict(row(0, 0.1, 0.5), method="base")]
  text = sweep.write_table(tmp_path, "seeds", rows, []).read_text()
  table = json.loads((tmp_path / "table.json").read_text())
  (summary,) = table["over_seeds"]  # base has one seed: nothing to summarise
  assert summary["method"] == "rltf" and summary["seeds"] == [0, 1, 2]
  assert summary["f1"] == dict(mean=pytest.approx(0.3), sd=pytest.approx(0.1), n=3)
  # an undefined AUROC is left out: mean of 0.7 and 0.9, sd sqrt(0.02)
  assert summary["auroc_synthetic"] == dict(mean=pytest.approx(0.8), sd=pytest.approx(0.02 ** 0.5), n=2)
  assert "| scd | SCD | rltf | 0,1,2 | 0.50 ± 0.00 | 0.50 ± 0.00 | 0.30 ± 0.10 |" in text


def test_table_shows_the_pairs_used_and_marks_one_experiment_under_two_names(tmp_path):
  # On data with 407 training positives, N = 1000 and N = 10000 at P = 0.5 both train on 407 + 407
  # pairs: the table must print what was used, mark the shortfall and name the duplicate.
  def row(run, n):
    return dict(run=run, seed=0, cohort="scd", abbrev="SCD", method="rltf", num_pairs=n,
                positive_fraction=0.5, positive_pairs=407, negative_pairs=407,
                pairs_as_requested=False, precision=0.5, recall=0.5, f1=0.5, rouge1=0.2,
                auroc_real=0.9, auroc_synthetic=0.8, auroc_augmented=0.8,
                true_continuations_with_target=20, metrics="m.json")
  exact = dict(row("rl-n100-p0.5", 100), positive_pairs=50, negative_pairs=50, pairs_as_requested=True,
               recall=0.4)
  text = sweep.write_table(tmp_path, "table2_ablation",
                           [exact, row("rl-n1000-p0.5", 1000), row("rl-n10000-p0.5", 10000)], []).read_text()
  assert "| rl-n100-p0.5 | 0 | SCD | rltf | 100 | 0.5 | 50 + 50 |" in text
  assert "| rl-n1000-p0.5 | 0 | SCD | rltf | 1000 | 0.5 | 407 + 407 * |" in text
  assert "| rl-n10000-p0.5 | 0 | SCD | rltf | 10000 | 0.5 | 407 + 407 * = rl-n1000-p0.5 |" in text


def test_table2_ablation_draws_enough_positives_for_every_row():
  """At SCD's true rarity: the enriched sample's pairs part must hold N x P positives for every row
  (all SCD patients kept: the members cap is above their expected number)."""
  from rltf_jax.configs import simulator
  cfg, runs, _, _ = sweep.load_sweep(str(REPO / "configs/sweeps/table2_ablation.py"))
  ec = cfg.data.enrich
  assert cfg.data.min_cohort_percent == 0
  expected_scd = ec.patients * simulator.TABLE4_PERCENT["scd"] / 100
  assert ec.members_per_cohort >= expected_scd  # every SCD patient of the sample is kept
  positives = 0.95 * expected_scd * ec.pairs_fraction  # 5% margin for the exact-count rounding
  others = ec.patients * ec.other_rate * ec.pairs_fraction
  for r in runs:
    n, p = r["overrides"].get("rltf.num_pairs", 0), r["overrides"].get("rltf.positive_fraction", 0)
    assert n * p <= positives and n * (1 - p) <= others, r["name"]
