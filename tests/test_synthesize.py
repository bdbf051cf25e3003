"""A synthetic MEDS dataset from a finished smoke run: the three modes, provenance, data card,
read-back, refusal to overwrite, and resuming an interrupted request from its shards."""

import json
import sys

import meds as meds_package
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from rltf_jax import synthesize  # noqa: E402
from rltf_jax.data import meds  # noqa: E402
from rltf_jax.data.cohorts import get_cohort  # noqa: E402
from rltf_jax.errors import ConfigError, DataError  # noqa: E402


@pytest.fixture
def run_dir(enriched_sweep):
  """A finished cohort run (the session's enriched smoke sweep: Shock, base and RLTF)."""
  return enriched_sweep[1] / "shock"


def test_whole_patients_read_back_with_provenance_and_card(run_dir, tmp_path):
  out = synthesize.synthesize(run_dir, "rltf", 25, "patients", tmp_path / "syn", shard=10)
  ds, _ = meds.read_meds(out)
  assert ds.num_patients == 25 and ds.num_events > 0
  assert np.array_equal(np.sort(ds.subject_id), np.arange(1, 26))
  meta = json.loads((out / "metadata" / "dataset.json").read_text())
  prov = meta["provenance"]
  assert meta["synthetic"] and prov["method"] == "rltf" and prov["mode"] == "patients"
  assert prov["model"] and prov["config"]["cohort"] == "shock" and prov["synthetic_patients"] == 25
  labels = pq.read_table(out / "labels" / "shock.parquet")
  meds_package.LabelSchema.validate(labels)
  assert labels.num_rows == 25 and labels.column("boolean_value").to_pylist().count(True) == \
      prov["synthetic_in_cohort"]
  card = (out / "README.md").read_text()
  assert "Patients: 25" in card and "membership-inference AUC" in card
  assert not (tmp_path / "syn.partial").exists()
  with pytest.raises(DataError, match="already exists"):
    synthesize.synthesize(run_dir, "rltf", 25, "patients", out)


def test_continuations_and_enriched_share(run_dir, tmp_path):
  codes = get_cohort("shock").codes
  plain = synthesize.synthesize(run_dir, "base", 40, "continue", tmp_path / "cont")
  rich = synthesize.synthesize(run_dir, "base", 40, "enriched", tmp_path / "rich", share=0.5)
  plain_ds, _ = meds.read_meds(plain)
  rich_ds, _ = meds.read_meds(rich)
  assert plain_ds.num_patients == rich_ds.num_patients == 40
  # Half the enriched prompts come from cohort members: far more records carry the target.
  assert rich_ds.patients_with_any(codes).sum() >= 10 > plain_ds.patients_with_any(codes).sum()
  assert "real histories" in (rich / "README.md").read_text()


def test_an_interrupted_request_resumes_and_another_request_is_refused(run_dir, tmp_path, monkeypatch):
  out = tmp_path / "syn"
  real_save = synthesize.PatientEvents.save
  calls = {"n": 0}

  def dies_after_first(self, path):
    calls["n"] += 1
    if calls["n"] > 1:
      raise KeyboardInterrupt()
    return real_save(self, path)
  monkeypatch.setattr(synthesize.PatientEvents, "save", dies_after_first)
  with pytest.raises(KeyboardInterrupt):
    synthesize.synthesize(run_dir, "base", 20, "patients", out, shard=10)
  assert (tmp_path / "syn.partial" / "shard-00000.npz").exists() and not out.exists()
  with pytest.raises(ConfigError, match="another request"):
    synthesize.synthesize(run_dir, "base", 20, "patients", out, shard=10, seed=5)
  saved = []

  def counting(self, path):
    saved.append(path.name)
    return real_save(self, path)
  monkeypatch.setattr(synthesize.PatientEvents, "save", counting)
  synthesize.synthesize(run_dir, "base", 20, "patients", out, shard=10)
  assert saved == ["shard-00001.npz"]  # the finished shard was read back, not regenerated
  assert meds.read_meds(out)[0].num_patients == 20
  with pytest.raises(ConfigError, match="no finished run"):
    synthesize.synthesize(run_dir, "sft", 5, "patients", tmp_path / "x")


def test_a_failed_request_leaves_nothing_that_blocks_the_next(run_dir, tmp_path):
  """Issue 30, 6: a request the data cannot meet fails before anything is recorded; a folder of
  another request without shards no longer blocks a new request, and --overwrite replaces one
  with shards."""
  out = tmp_path / "syn"
  with pytest.raises(DataError, match="held-out patients can be prompts"):
    synthesize.synthesize(run_dir, "base", 100_000, "continue", out)
  assert not (tmp_path / "syn.partial").exists()
  stale = tmp_path / "syn.partial"
  stale.mkdir()
  (stale / "request.json").write_text(json.dumps(dict(patients=12)))  # a failed request's leftover
  synthesize.synthesize(run_dir, "base", 6, "patients", out, shard=3)
  assert meds.read_meds(out)[0].num_patients == 6
  out2 = tmp_path / "syn2"
  other = tmp_path / "syn2.partial"
  other.mkdir()
  (other / "request.json").write_text(json.dumps(dict(patients=12)))
  np.savez(other / "shard-00000.npz", x=np.zeros(1))  # another request's finished shard
  with pytest.raises(ConfigError, match="another request.*--overwrite"):
    synthesize.synthesize(run_dir, "base", 6, "patients", out2, shard=3)
  synthesize.synthesize(run_dir, "base", 6, "patients", out2, shard=3, overwrite=True)
  assert meds.read_meds(out2)[0].num_patients == 6


def test_an_unmet_enriched_share_is_warned_with_its_figures_and_the_card_says_what_was_made(
    run_dir, tmp_path):
  """Issue 30, 5 and 7: asking for more cohort prompts than the data has is delivered with a
  warning and the achieved share in the card and provenance; continue mode is described as prompt
  plus generated events, with counts; the code version names the commit."""
  import re
  with pytest.raises(DataError) as e:  # how many prompts there are: all of them, members too few
    synthesize.synthesize(run_dir, "base", 100_000, "enriched", tmp_path / "x", share=1.0)
  n = int(re.search(r"only (\d+) held-out", str(e.value)).group(1))
  out = synthesize.synthesize(run_dir, "base", n, "enriched", tmp_path / "rich", share=1.0)
  prov = json.loads((out / "metadata" / "dataset.json").read_text())["provenance"]
  card = (out / "README.md").read_text()
  assert prov["share_requested"] == 1.0 and prov["share_achieved"] < 1.0
  assert prov["prompts_from_cohort"] < n and "**Warning**: --share 1.0" in card
  assert f"{prov['prompts_from_cohort']} of {n}" in card and "every eligible patient is taken" in card
  gen = prov["generated_events"]
  assert gen["generated_max"] > 0 and "followed by the events the generator appended" in card
  assert "last 5 events of each were replaced" not in card
  assert "+" in prov["code_version"] and prov["code_version"] != "0.1.0"
  assert "95% intervals" in card and "**Caution**" in card  # smoke evaluation: few patients
  assert prov["population_cohort_fraction_of"] == "the real training split"
