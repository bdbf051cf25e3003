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
from rltf_jax.evaluation import reproduction  # noqa: E402




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

  readme = tmp_path / "README.md"
  readme.write_text(f"intro\n\n{reproduction.START}\nOLD-TEXT\n{reproduction.END}\n\nafter\n")
  assert reproduction.main(["--sweep", str(spec), "--workdir", str(work), "--readme", str(readme)]) == 0
  text = readme.read_text()
  assert text.startswith("intro") and text.rstrip().endswith("after") and "OLD-TEXT" not in text
  assert "## Reproduction" in text and "| Shock |" in text and "**" in text
  data = json.loads((work / "sweeps" / "one_cohort" / "reproduction.json").read_text())
  d = data["evidence"]["shock"]["rltf-base"]
  assert set(d) >= {"all", "new_onset", "repeat"} and "auroc_synthetic" in d["all"]
  assert data["evidence"]["shock"]["counts"]["weighted"]

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
