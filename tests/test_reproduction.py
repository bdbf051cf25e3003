"""End to end at smoke size with the cohort-enriched sample: a sweep of one cohort, its weighted
evaluation, and the Reproduction section built from it (and spliced into a README)."""

import json
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from rltf_jax import io  # noqa: E402
from rltf_jax.data import enrich  # noqa: E402
from rltf_jax.errors import DataError  # noqa: E402
from rltf_jax.reporting import reproduction  # noqa: E402




def test_enriched_sweep_is_weighted_and_gives_a_reproduction_section(enriched_sweep, tmp_path):
  spec, work = enriched_sweep

  m = json.loads((work / "shock" / "eval" / "rltf" / "metrics.json").read_text())
  assert m["design"]["split"] == "eval" and m["design"]["weighted"]
  t = m["fidelity"]["target"]
  assert t["weighted"] and "unweighted" in t
  # Members were drawn first: the evaluated sample is enriched far above the population.
  counts = m["patients"]["test"]
  assert counts["selected_members"] / counts["selected"] > 10 * m["patients"]["population_member_estimate"]
  # RLTF trained on the enriched sample's pairs part, never on an evaluated patient.
  pp = io.load_npz(work / "shock" / "eval" / "rltf" / "per_patient.npz")
  assert np.all(pp["test_subject_id"] >= enrich.ID_STRIDE)
  pair_ids = io.load_npz(work / "shock" / "preference" / "pairs.npz")["prompt.subject_id"]
  assert np.all(pair_ids >= enrich.ID_STRIDE)
  assert not np.intersect1d(pair_ids, pp["test_subject_id"]).size
  assert np.all(pp["test_weight"] >= 1.0) and pp["test_weight"].max() > 1.0
  assert "utility_scores_synthetic" in pp

  readme = tmp_path / "RESULTS.md"
  readme.write_text(f"intro\n\n{reproduction.START}\nOLD-TEXT\n{reproduction.END}\n\n"
                    f"{reproduction.TABLE2_START}\nOLD-TABLE-2\n{reproduction.TABLE2_END}\n\nafter\n")
  # --table2 '': the rare cohorts are regenerated, the results file's Table 2 block is left as it was.
  assert reproduction.main(["--sweep", str(spec), "--workdir", str(work), "--results", str(readme),
                            "--table2", ""]) == 0
  text = readme.read_text()
  assert text.startswith("intro") and text.rstrip().endswith("after") and "OLD-TEXT" not in text
  assert "## Reproduction" in text and "| Shock |" in text and "**" in text
  assert "OLD-TABLE-2" in text and "4 attention heads" not in text  # smoke size: 1 head
  assert "1 layers of width 32, 1 attention heads, 40 pretraining steps" in text
  # The default names the Table 2 sweep, whose runs are not in this work directory: its block says so.
  assert reproduction.main(["--sweep", str(spec), "--workdir", str(work), "--results", str(readme)]) == 0
  text = readme.read_text()
  assert "OLD-TABLE-2" not in text and "### Table 2" in text and "Not run yet." in text
  assert text.index(reproduction.END) < text.index(reproduction.TABLE2_START)
  data = json.loads((work / "sweeps" / "one_cohort" / "reproduction.json").read_text())
  d = data["evidence"]["shock"]["rltf-base"]
  assert set(d) >= {"all", "new_onset", "repeat"} and "auroc_synthetic" in d["all"]
  assert data["evidence"]["shock"]["counts"]["weighted"]

  # A results file that does not exist yet is created: the header, then both blocks (the
  # deprecated --readme spelling still names it).
  fresh = tmp_path / "fresh" / "RESULTS.md"
  fresh.parent.mkdir()
  assert reproduction.main(["--sweep", str(spec), "--workdir", str(work), "--readme", str(fresh),
                            "--table2", ""]) == 0
  text = fresh.read_text()
  assert text.startswith("# Results") and "| Shock |" in text
  assert text.index(reproduction.END) < text.index(reproduction.TABLE2_START) < text.index(reproduction.TABLE2_END)

  bare = tmp_path / "BARE.md"
  bare.write_text("no markers\n")
  with pytest.raises(DataError, match="reproduction:start"):
    reproduction.splice(bare, "x")


def test_verdict_rules():
  assert reproduction._side(dict(value=0.2, ci95=[0.1, 0.3])) == "above"
  assert reproduction._side(dict(value=-0.2, ci95=[-0.3, -0.1])) == "below"
  assert reproduction._side(dict(value=0.0, ci95=[-0.1, 0.1])) == "undecided"
  assert reproduction._side(dict(value=0.0, ci95=[-0.01, 0.01]), 0.02) == "within"
  assert reproduction._verdict(["above"] * 5 + ["undecided"] * 2, "above") == "holds"
  assert reproduction._verdict(["above"] * 3 + ["below"] * 4, "above") == "mixed"
  assert reproduction._verdict(["above"] * 2 + ["below"] * 5, "above") == "does not hold"
  assert reproduction._verdict([], "above") == "not measured"
  assert reproduction._verdict(["above"], "above").startswith("too few")


def _fake_eval(d, generated, truth, rouge, scores, training=None):
  """An evaluation directory as `evaluate` writes it, with the fields Table 2's block reads."""
  n = len(truth)
  d.mkdir(parents=True)
  io.atomic_savez(d / "per_patient.npz", test_subject_id=np.arange(n), test_validation=np.ones(n, bool),
                  test_weight=np.ones(n), test_target_in_prompt=np.zeros(n, bool),
                  test_target_in_true=truth, test_target_in_generated=generated,
                  test_rouge1_prf=np.repeat(rouge[:, None], 3, axis=1), utility_scores_synthetic=scores)
  tp = int((generated & truth).sum())
  f1 = 2 * tp / max(int(generated.sum()) + int(truth.sum()), 1)
  io.atomic_write_json(d / "metrics.json", dict(
      settings=dict(bootstrap_samples=200, seed=0), training=training or {},
      fidelity=dict(target=dict(f1=dict(value=f1), recall=dict(value=tp / truth.sum()),
                                counts=dict(actual_positive=int(truth.sum()))),
                    rouge1=dict(value=float(rouge.mean()))),
      utility=dict(synthetic=dict(auroc=dict(value=0.5)))))


def test_table2_block_judges_each_claim_on_paired_rows(tmp_path):
  """Rows that differ as the paper says give "holds"; the reverse gives "fails"; absent rows say so."""
  rng = np.random.default_rng(0)
  n = 600
  truth = rng.random(n) < 0.3
  labels = truth.astype(float)
  good = truth & (rng.random(n) < 0.8)   # finds 80% of the positives
  poor = truth & (rng.random(n) < 0.1)
  rouge = rng.random(n)
  rows = {"base": poor, "rl-n100-p0.5": poor, "rl-n10000-p0.5": good, "rl-n10000-p1": poor,
          "sft-n10000-p0.5": good}  # SFT as good as RL: undecided; three rows not run
  methods = {"base": "base", "sft-n10000-p0.5": "sft"}
  for name, generated in rows.items():
    _fake_eval(tmp_path / f"scd-{name}" / "eval" / methods.get(name, "rltf"), generated, truth,
               rouge, labels + rng.normal(0, 0.3 if generated is good else 3.0, n),
               dict(positive_pairs=50, negative_pairs=50, as_requested=True) if name != "base" else None)
  lines, data = reproduction.table2_lines(str(REPO / reproduction.TABLE2_SWEEP), str(tmp_path))
  claims = data["claims"]
  assert claims[reproduction.TABLE2_CLAIMS[0][0]]["verdict"] == "holds"        # N = 10000 > N = 100
  assert claims[reproduction.TABLE2_CLAIMS[1][0]]["verdict"] == "holds"        # P = 0.5 > P = 1.0
  assert claims[reproduction.TABLE2_CLAIMS[2][0]]["verdict"] == "holds"        # ... AUROC
  assert claims[reproduction.TABLE2_CLAIMS[3][0]]["verdict"] == "undecided"    # SFT as good
  assert sorted(data["missing"]) == sorted(["rl-n1000-p0.5", "rl-n1000-p1", "rl-n100-p1"])
  assert data["rows"]["rl-n10000-p0.5"]["vs_base"]["recall"]["ci95"][0] > 0.5
  assert data["rows"]["rl-n10000-p0.5"]["paper"]["f1"] == 0.41
  text = "\n".join(lines)
  assert "| rl-n10000-p0.5 | 10000 | 0.5 | 50 + 50 |" in text and "0.41 / 0.61 / 0.372" in text
  # The no-model anchor, by hand: the fake prompts hold the target for no patient, so it finds none.
  assert data["prompt_rule"] == dict(precision=0.0, recall=0.0, f1=0.0, true_positive=0,
                                     actual_positive=int(truth.sum()))
  # --sweep '': Table 2 alone is regenerated; the results file's rare-cohort block is left as it was.
  readme = tmp_path / "RESULTS.md"
  readme.write_text(f"{reproduction.START}\nOLD-TEXT\n{reproduction.END}\n"
                    f"{reproduction.TABLE2_START}\nOLD-TABLE-2\n{reproduction.TABLE2_END}\n")
  assert reproduction.main(["--sweep", "", "--workdir", str(tmp_path), "--results", str(readme)]) == 0
  after = readme.read_text()
  assert "OLD-TEXT" in after and "OLD-TABLE-2" not in after and "| rl-n10000-p0.5 | 10000 |" in after
  table2_dir = tmp_path / "sweeps" / "table2_ablation"
  assert json.loads((table2_dir / "reproduction_table2.json").read_text())["claims"] == data["claims"]
  with pytest.raises(DataError, match="both empty"):
    reproduction.main(["--sweep", "", "--table2", "", "--workdir", str(tmp_path)])
  # The same rows the other way round: the claim fails.
  rows_rev = tmp_path / "rev"
  for name, generated in (("rl-n10000-p0.5", poor), ("rl-n100-p0.5", good)):
    _fake_eval(rows_rev / f"scd-{name}" / "eval" / "rltf", generated, truth, rouge, labels)
  _, rev = reproduction.table2_lines(str(REPO / reproduction.TABLE2_SWEEP), str(rows_rev))
  assert rev["claims"][reproduction.TABLE2_CLAIMS[0][0]]["verdict"].startswith("fails")
  assert rev["claims"][reproduction.TABLE2_CLAIMS[1][0]]["verdict"] == "not run yet"


def test_prompt_rule_against_hand_counts():
  """Four scored patients (one more is not scored): the rule predicts patients 0 and 1 (target in the
  prompt); the truth is 0 and 2. Unweighted TP 1, FP 1, FN 1; weighted by (1, 3, 2, 1): precision
  1 / 4, recall 1 / 3."""
  pp = dict(test_validation=np.array([1, 1, 1, 1, 0], bool),
            test_target_in_prompt=np.array([1, 1, 0, 0, 1], bool),
            test_target_in_true=np.array([1, 0, 1, 0, 1], bool),
            test_weight=np.array([1.0, 3.0, 2.0, 1.0, 100.0]))
  rule = reproduction._prompt_rule(pp)
  assert rule["true_positive"] == 1 and rule["actual_positive"] == 2
  assert rule["precision"] == pytest.approx(0.25) and rule["recall"] == pytest.approx(1 / 3)
  assert rule["f1"] == pytest.approx(2 * 0.25 / 3 / (0.25 + 1 / 3))
