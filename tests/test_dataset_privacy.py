"""Privacy of a released synthetic dataset: distances checked by hand, and the copy and marginals
anchors land where they must (copy: every record at distance 0, membership AUC ~1, positive
privacy loss; marginals: no copies, membership AUC ~0.5)."""

import numpy as np
import scipy.sparse as sp

from rltf_jax.configs import simulator
from rltf_jax.data.cohorts import get_cohort
from rltf_jax.data.simulate import story
from rltf_jax.evaluation import dataset_privacy as dp


def test_jaccard_nearest_neighbours_by_hand():
  q = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], np.float32))
  r = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], np.float32))
  d, i = dp.nearest(q, r, 2)
  assert np.allclose(d[0], [0.0, 2 / 3]) and list(i[0]) == [0, 1]  # {0,1} vs {0,2}: 1 - 1/3
  assert np.allclose(d[1], [2 / 3, 1.0])  # {2,3} vs {0,2}: 1 - 1/3; vs {0,1}: 1; vs {}: 1
  assert d[2, 0] == 0.0 and i[2, 0] == 2  # two empty records are identical
  d_self, i_self = dp.nearest(r, r, 1, exclude_self=True)
  assert not np.any(i_self[:, 0] == np.arange(3))


def test_anchors_bracket_the_privacy_metrics():
  cfg = simulator.get_config()
  ds = story.simulate(cfg, 1200, 11)
  train, holdout = ds.select(np.arange(0, 600)), ds.select(np.arange(600, 1200))
  cohort = get_cohort("dm")  # common enough for a cohort block at this size
  out = dp.evaluate_dataset(train, train, holdout, cohort.codes, num_samples=50, seed=0)
  copy, marg = out["copy"]["all"], out["marginals"]["all"]
  assert copy["dcr"]["synthetic_median"] == 0.0 and copy["copies"]["synthetic"]["value"] == 1.0
  assert copy["membership"]["value"] > 0.95 and copy["nnaa"]["privacy_loss"] > 0.2
  assert marg["copies"]["synthetic"]["value"] == 0.0 and abs(marg["membership"]["value"] - 0.5) < 0.1
  assert marg["dcr"]["synthetic_median"] > copy["dcr"]["synthetic_median"]
  # The generator here is the training set itself: it scores as the copy anchor does.
  assert out["generator"]["all"]["membership"]["value"] > 0.95
  assert out["copy"]["cohort"]["patients"]["synthetic"] > 10  # the cohort measured on its own
  assert out["copy"]["all"]["attribute"]["train"]["value"] >= out["marginals"]["all"]["attribute"]["train"]["value"]
  # At a low false-positive rate: the copy anchor gives its members away, the marginals do not.
  for name, lo, hi in (("copy", 0.95, 1.0), ("marginals", 0.0, 0.05)):
    for attack in ("distance", "density"):
      t = out[name]["all"]["membership"]["attacks"][attack]["tpr_at_fpr"]["0.01"]
      assert lo <= t["value"] <= hi, (name, attack, t)
      assert t["allowed_false_positives"] == int(0.01 * t["nonmembers"])
    strongest = out[name]["all"]["membership"]["strongest"]["all"]
    assert lo <= strongest["tpr"]["value"] <= hi
  m = out["copy"]["all"]["membership"]
  assert m["members"] == m["nonmembers"]  # matched: the same cohort counts on both sides
  for side in m["matching"].values():
    assert side["drawn_per_side"] == min(side["pool_members"], side["pool_nonmembers"])
  assert "cohort" in m["attacks"]["density"]["strata"]


def test_the_table_has_a_row_per_data_and_population():
  cfg = simulator.get_config()
  ds = story.simulate(cfg, 400, 12)
  out = dp.evaluate_dataset(ds.select(np.arange(0, 100)), ds.select(np.arange(100, 300)),
                            ds.select(np.arange(300, 400)), get_cohort("scd").codes, num_samples=20)
  table = dp.privacy_table(out)
  assert "| copy | all (100) |" in table and table.count("| marginals |") == 4
  assert "fewer than 2 patients" in table  # no SCD patient in 400: the cohort rows say so


def test_fidelity_anchors_copy_is_close_and_marginals_lose_the_cooccurrences():
  cfg = simulator.get_config()
  ds = story.simulate(cfg, 1600, 13)
  train, holdout = ds.select(np.arange(0, 800)), ds.select(np.arange(800, 1600))
  out = dp.evaluate_dataset(train, train, holdout, get_cohort("dm").codes, num_samples=20, seed=0)
  copy, marg = out["copy"]["fidelity"]["all"], out["marginals"]["fidelity"]["all"]
  # Real records from the same population: prevalences agree, detection is near chance.
  assert copy["prevalence"]["common"]["r2_identity"] > 0.9 and abs(copy["detection"]["auroc"] - 0.5) < 0.1
  # Independent codes keep the prevalences but lose the co-occurrences, and are detectable.
  assert marg["prevalence"]["common"]["r2_identity"] > 0.8
  assert marg["cooccurrence"]["r2_identity"] < copy["cooccurrence"]["r2_identity"] - 0.1
  assert marg["detection"]["auroc"] > copy["detection"]["auroc"] + 0.1
  gen = out["generator"]["fidelity"]["all"]["distributions"]
  assert set(gen) == {"record_events", "visits", "codes_per_visit", "age_years", "days_between_visits"}
  assert gen["record_events"]["ks"] < 0.15  # two samples of one population


def test_run_privacy_stage_measures_every_method_against_the_fine_tunes_patients(enriched_sweep):
  """The pipeline's privacy stage on a finished run (Shock, base and RLTF): both methods and both
  anchors, against RLTF's preference-pair patients, half the evaluated patients released and the
  other half the holdout; the copy anchor leaks everything and the report shows the tables and the
  distance plot."""
  import json
  from rltf_jax.data.events import PatientEvents
  _, work = enriched_sweep
  run = work / "shock"
  rec = json.loads((run / "privacy" / dp.RUN_FILE).read_text())
  assert rec["methods"] == ["base", "rltf"] and set(rec["results"]) == {"base", "rltf", "copy", "marginals"}
  assert rec["reference_source"].startswith("the fine-tune's preference-pair patients")
  n = rec["patients"]
  prompts = PatientEvents.load(run / "eval" / "rltf" / "test_prompts.npz")
  # Half the evaluated patients released, the other half the holdout, split within each stratum.
  assert n["released"] + n["holdout"] == prompts.num_patients and n["holdout"] > 0
  assert abs(n["released_members"] - n["holdout_members"]) <= 1 and n["holdout_members"] > 0
  copy = rec["results"]["copy"]["all"]
  assert copy["dcr"]["synthetic_median"] == 0.0 and copy["membership"]["value"] > 0.9
  for name in ("base", "rltf"):
    assert 0.0 <= rec["results"][name]["all"]["dcr"]["synthetic_median"] <= 1.0
  z = np.load(run / "privacy" / dp.ARRAYS_FILE)
  assert np.all(z["copy.all.synthetic"] == 0.0) and len(z["rltf.all.synthetic"]) == n["released"]
  assert len(z["holdout.lengths"]) == n["holdout"] and (run / "report" / "privacy_shock.png").exists()
  report = (run / "report" / "report.md").read_text()
  assert "### Privacy and fidelity of the released records" in report
  # One row in the privacy table, one in the fidelity table, one in the strongest-attack table.
  assert report.count("| copy | all") == 3


def test_attribute_inference_of_a_configurable_sensitive_code_set():
  """Besides the cohort's codes, any named code set is attacked the same way: from the copy anchor
  the attacker infers it at least as well as from the marginals anchor, and a set no patient has
  says so."""
  cfg = simulator.get_config()
  ds = story.simulate(cfg, 600, 13)
  train, holdout = ds.select(np.arange(0, 300)), ds.select(np.arange(300, 600))
  out = dp.evaluate_dataset(train, train, holdout, get_cohort("dm").codes, num_samples=20, seed=0,
                            sensitive_codes={"hypertension": ["ICD10CM/I10"], "absent": ["ICD10CM/Z9999"]})
  att = out["copy"]["all"]["attribute_sensitive"]
  assert att["hypertension"]["train"]["positives"] > 10
  marg = out["marginals"]["all"]["attribute_sensitive"]["hypertension"]
  assert att["hypertension"]["train"]["value"] >= marg["train"]["value"]
  assert att["absent"] == {"reason": "none of its codes is in the code table"}
  assert "attribute_sensitive" in out["generator"]["cohort"]
  table = dp.privacy_table(out)  # the data card names each set, and says when one is absent
  assert "| copy | all | hypertension | " in table
  assert "| copy | all | absent | none of its codes is in the code table |" in table


def _with_a_lab_event_each(ds):
  """Every record plus one lab event at its end: a family the run's `data.include` drops."""
  from rltf_jax.data.events import PatientEvents
  end = ds.offsets[1:]
  last = np.maximum(end - 1, 0)
  has = ds.lengths > 0
  lab = len(ds.codes)
  return PatientEvents.build(
      subject_id=ds.subject_id, sex=ds.sex, birth_day=ds.birth_day,
      offsets=ds.offsets + np.arange(ds.num_patients + 1),
      code=np.insert(ds.code, end, lab), day=np.insert(ds.day, end, np.where(has, ds.day[last], ds.birth_day + 1)),
      visit=np.insert(ds.visit, end, np.where(has, ds.visit[last], 0)),
      pos=np.insert(ds.pos, end, 0), codes=list(ds.codes) + ["LAB//50912"])


def test_dataset_privacy_sees_training_records_passed_off_as_synthetic(enriched_sweep, tmp_path, capsys):
  """Issue 30, item 4: the run's own training records, with a family the run does not include
  (labs), passed as "synthetic": read as the run reads its data they are exact copies (~1),
  membership AUC ~1 and a loud flag; nothing is written into the "synthetic" (a source) folder."""
  import json
  import pytest
  from rltf_jax.data import meds
  from rltf_jax.errors import ConfigError
  from rltf_jax import pipeline
  from rltf_jax.commands.privacy import main
  _, work = enriched_sweep
  run = work / "shock"
  ctx = pipeline.open_run(run)
  train = ctx.dataset.subset("train")
  source = meds.write_meds(_with_a_lab_event_each(train), tmp_path / "source", splits=False)
  before = sorted(p.name for p in source.rglob("*"))
  with pytest.raises(ConfigError, match="not a synthetic dataset written by synthesize"):
    main(["--synthetic", str(source), "--run", str(run), "--bootstrap", "20"])
  out = tmp_path / "out"
  assert main(["--synthetic", str(source), "--run", str(run), "--out", str(out), "--bootstrap", "20"]) == 0
  assert "WARNING" in capsys.readouterr().err
  rec = json.loads((out / "privacy.json").read_text())
  copies = rec["copies_of_training_records"]
  assert copies["code_set_copy_fraction"] > 0.95 and copies["record_copy_fraction"] > 0.95
  assert rec["alarm"] and rec["released_read_as"]["include"] == list(ctx.cfg.data.include)
  gen = rec["generator"]["all"]
  assert gen["copies"]["synthetic"]["value"] > 0.95 and gen["membership"]["value"] > 0.95
  assert gen["membership"]["strongest"]["all"]["tpr"]["value"] > 0.95
  assert sorted(p.name for p in source.rglob("*")) == before  # the source folder is untouched
  # Unfiltered (what the old reader did), the lab events hide every copy.
  raw, _ = meds.read_meds(source)
  assert dp.copies_of_training(raw, train)["code_set_copy_fraction"] == 0.0
