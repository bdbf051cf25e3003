"""A user's data in its own words (issue 30): names that cannot leave the work directory, no paper
codes in a user dataset's vocabulary, ACES cohorts evaluated by es-aces over the source's code
strings, synthetic MEDS in the source's spelling, and the ICD-9-CM mapping from the definition."""

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO
import foreign_meds

sys.path.insert(0, str(REPO))
from rltf_jax.configs import base as base_config  # noqa: E402
from rltf_jax import names, pipeline  # noqa: E402
from rltf_jax.data import cohorts, meds  # noqa: E402
from rltf_jax.data.source_codes import SourceCodes, scan_meds  # noqa: E402
from rltf_jax.data.vocab import Vocabulary  # noqa: E402
from rltf_jax.errors import ConfigError  # noqa: E402
from rltf_jax.runs import RunDir  # noqa: E402


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
  return foreign_meds.write(tmp_path_factory.mktemp("foreign") / "meds")


def _aces_file(tmp_path, text=foreign_meds.SEPSIS_ACES, name="sepsis.yaml"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def _cfg(foreign, cohort="scd"):
  cfg = base_config.get_config("smoke")
  cfg.data.source, cfg.data.path, cfg.cohort = "meds", str(foreign), cohort
  return cfg


# ------------------------------------------------------------------ 9: names that cannot escape
@pytest.mark.parametrize("bad", ["../../escaped_cohort", "a/b", "..", "a\\b", ".hidden", "", "x" * 65,
                                 "ok..not"])
def test_unsafe_names_are_refused(bad):
  with pytest.raises(ConfigError, match="cannot name a directory"):
    names.check_name(bad, "cohort name")
  assert names.check_name("sepsis_icd9-10.v2", "cohort name") == "sepsis_icd9-10.v2"


def test_a_cohort_named_to_walk_out_of_the_workdir_is_refused_before_any_write(tmp_path, foreign):
  definition = tmp_path / "shared_by_a_colleague.json"
  definition.write_text(json.dumps(dict(name="../../escaped_cohort", codes=["A41.9"])))
  work = tmp_path / "W" / "a" / "w"
  with pytest.raises(ConfigError, match="cohort name .*'../../escaped_cohort' cannot name a directory"):
    pipeline.run(_cfg(foreign, str(definition)), str(work))
  assert not (tmp_path / "W").exists()  # nothing written: not the work directory, not outside it
  cfg = _cfg(foreign)
  cfg.run_name = "../up"
  with pytest.raises(ConfigError, match="run_name '../up' cannot name a directory"):
    pipeline.run(cfg, str(work))
  assert not (tmp_path / "W").exists()


# ------------------------------------------------------------------ 2: no paper codes in a user vocabulary
def test_a_user_dataset_vocabulary_holds_only_its_own_codes(tmp_path, foreign):
  cfg = _cfg(foreign)
  cfg.data.vocab_min_count = 1
  run = RunDir(pipeline.data_dir(cfg, tmp_path), "data", cfg.data)
  pipeline._build_data(cfg, run)
  vocab = Vocabulary.load(run.path / "vocab.json")
  ds, _ = meds.read_meds(foreign)
  foreign_codes = set(vocab.codes) - set(ds.codes.tolist())
  assert not foreign_codes, sorted(foreign_codes)[:5]  # was 75 Table-4 codes
  saved = SourceCodes.load(run.path / "source_codes.json")
  assert saved.spelling("ICD10CM/A419") == "DIAGNOSIS//ICD//10//A419"


# ------------------------------------------------------------------ 1: ACES cohorts through es-aces
def test_an_aces_sepsis_file_over_the_source_codes_labels_what_a_recount_finds(tmp_path, foreign):
  ds, _ = meds.read_meds(foreign)
  source = scan_meds(foreign)
  definition = cohorts.read_definition(_aces_file(tmp_path))
  cohort, _ = cohorts.resolve(definition, ds.codes, source)
  assert cohort.name == "sepsis" and cohort.codes == (
      "ICD10CM/A4151", "ICD10CM/A419", "ICD9CM/03849", "ICD9CM/0389", "ICD9CM/78552", "ICD9CM/99592")
  import re
  rx = re.compile(r"^DIAGNOSIS//ICD//9//(038.*|99591|99592|78552)$")
  icd10 = {"DIAGNOSIS//ICD//10//A419", "DIAGNOSIS//ICD//10//A4151", "DIAGNOSIS//ICD//10//R6521"}
  expected = foreign_meds.recount(foreign, lambda c: bool(rx.search(c)) or c in icd10)
  assert expected == set(foreign_meds.SEPSIS_SUBJECTS)
  members = cohorts.aces_members(definition, foreign, ds.subject_id)
  assert set(ds.subject_id[members].tolist()) == expected
  assert (ds.patients_with_any(cohort.codes) == members).all()


def test_aces_value_bounds_narrow_the_labels(tmp_path, foreign):
  text = ("metadata: {predicate: high_creatinine}\npredicates:\n  high_creatinine:\n"
          "    code: LAB//50912//mg/dL\n    value_min: 1.5\n    value_min_inclusive: true\n")
  ds, _ = meds.read_meds(foreign)
  definition = cohorts.read_definition(_aces_file(tmp_path, text, "creat.yaml"))
  members = cohorts.aces_members(definition, foreign, ds.subject_id)
  # value 0.5 + 0.1 * (s % 13) >= 1.5 (float32): s % 13 in 10..12
  assert set(ds.subject_id[members].tolist()) == {s for s in range(1, 31) if s % 13 >= 10}


@pytest.mark.parametrize("entry, shown, nearest", [
    ("code: {regex: '^DIAGNOSIS//ICD//9//(99591)$'}", "99591", "DIAGNOSIS//ICD//9//03849"),
    ("code: DIAGNOSIS//ICD//10//A41.9", "A41.9", "DIAGNOSIS//ICD//10//A4151"),
    ("code: {any: ['DIAGNOSIS//ICD//9//038*']}", "is an exact code", "DIAGNOSIS//ICD//9//03849"),
])
def test_a_predicate_that_matches_nothing_names_the_nearest_codes_as_written(tmp_path, foreign, entry,
                                                                               shown, nearest):
  ds, _ = meds.read_meds(foreign)
  path = _aces_file(tmp_path, f"predicates:\n  s:\n    {entry}\n", "miss.yaml")
  with pytest.raises(ConfigError, match="nearest codes: ") as e:
    cohorts.resolve(cohorts.read_definition(path), ds.codes, scan_meds(foreign))
  assert shown in str(e.value) and nearest in str(e.value) and "ICD9CM/" not in str(e.value)


def test_a_code_list_matches_the_source_spelling_too(tmp_path, foreign):
  ds, _ = meds.read_meds(foreign)
  path = tmp_path / "s.json"
  path.write_text(json.dumps(dict(name="s", codes=[{"regex": "^DIAGNOSIS//ICD//9//038"},
                                                   "DIAGNOSIS//ICD//10//A41*"])))
  cohort, _ = cohorts.resolve(cohorts.read_definition(str(path)), ds.codes, scan_meds(foreign))
  assert cohort.codes == ("ICD10CM/A4151", "ICD10CM/A419", "ICD9CM/03849", "ICD9CM/0389")


# ------------------------------------------------------------------ 3: synthetic MEDS in the source's words
def test_written_data_uses_the_source_spelling_and_invents_no_visits_or_places(tmp_path, foreign):
  ds, _ = meds.read_meds(foreign)
  source = scan_meds(foreign)
  assert source.columns == {"visit": False, "place_of_service": False}
  out = meds.write_meds(ds, tmp_path / "out", source=source)
  written = foreign_meds.raw_codes(out)
  assert written <= foreign_meds.raw_codes(foreign), sorted(written - foreign_meds.raw_codes(foreign))[:5]
  schema = pq.read_schema(out / "data" / "0.parquet")
  assert "visit" not in schema.names and "place_of_service" not in schema.names
  codes = pq.read_table(out / "metadata" / "codes.parquet").column("code").to_pylist()
  assert "DIAGNOSIS//ICD//10//A419" in codes and "ICD10CM/A419" not in codes
  # The same ACES file, run by es-aces on the written data, labels as the data's own labels do.
  definition = cohorts.read_definition(_aces_file(tmp_path))
  cohort, _ = cohorts.resolve(definition, ds.codes, source)
  back, _ = meds.read_meds(out)
  own = meds.cohort_labels(back, cohort.codes).column("boolean_value").to_numpy(zero_copy_only=False)
  assert (cohorts.aces_members(definition, out, back.subject_id) == own).all() and own.sum() == 6


def test_a_value_bin_token_and_a_sex_row_are_written_in_the_source_spelling():
  source = SourceCodes({"LAB/50912//mg/dL": ("LAB//50912//mg/dL",)})
  assert source.spelling("LAB/50912//mg/dL//Q3of5") == "LAB//50912//mg/dL"
  assert source.spelling("ICD10CM/X") == "ICD10CM/X"
  spelled = SourceCodes({}, ("MEDS_BIRTH", "SEX//FEMALE", "SEX//MALE"))
  assert spelled.spelling("GENDER//F") == "SEX//FEMALE" and spelled.spelling("GENDER//M") == "SEX//MALE"


# ------------------------------------------------------------------ 8: ICD-9 mapping from the definition
def test_map_icd9_finds_patients_coded_only_in_icd9(tmp_path):
  """CMS GEM: 03849 -> A4159 and 0382 -> A403; neither target is in the data, so a mapping from the
  data's ICD-10-CM codes missed both ICD-9-only patients (and `A40*`, with no ICD-10-CM code in the
  data, was an error)."""
  table = np.array(["ICD10CM/A419", "ICD9CM/03849", "ICD9CM/0382", "ICD9CM/4019", "ICD10CM/I10"])
  path = tmp_path / "sep.json"
  path.write_text(json.dumps(dict(name="sep9", codes=["A40*", "A41*"], map_icd9=True)))
  cohort, mapped = cohorts.resolve(cohorts.read_definition(str(path)), table)
  assert mapped == ("ICD9CM/0382", "ICD9CM/03849")
  assert cohort.codes == ("ICD10CM/A419", "ICD9CM/0382", "ICD9CM/03849")
  path.write_text(json.dumps(dict(name="sep9", codes=["A40*", "A41*"], map_icd9=False)))
  with pytest.raises(ConfigError, match="prefix 'A40\\*' matches no code"):
    cohorts.resolve(cohorts.read_definition(str(path)), table)


# ------------------------------------------------------------------ 5: no silent substitutions in the data stage
def test_the_data_stage_says_which_splits_it_used_and_refuses_an_empty_include(tmp_path, foreign, caplog):
  import shutil
  from rltf_jax.data.load import load_with_report
  from rltf_jax.errors import DataError
  cfg = _cfg(foreign).data
  cfg.split_fractions = (0.6, 0.1, 0.3)
  with caplog.at_level("WARNING"):
    ds, report = load_with_report(cfg)
  assert report["splits"]["source"] == "dataset" and report["splits"]["patients"] == [21, 3, 6]
  assert "data.split_fractions (0.6, 0.1, 0.3) is not used" in caplog.text
  bare = tmp_path / "bare"
  shutil.copytree(foreign / "data", bare / "data")  # no metadata/
  cfg.path = str(bare)
  caplog.clear()
  with caplog.at_level("WARNING"):
    _, report = load_with_report(cfg)
  assert report["splits"]["source"] == "data.split_fractions" and "no metadata/subject_splits" in caplog.text
  cfg.include = ("procedures",)
  with pytest.raises(DataError, match=r"keeps none of the source.s 366 events .it holds diagnoses 186, medications 60, labs 60, other 60.*data.include="):
    load_with_report(cfg)


def test_static_rows_are_counted(foreign):
  assert scan_meds(foreign).static_rows == dict(total=30, used_as_sex=30, dropped=0)


def test_a_cohort_that_is_not_rare_is_warned_about(foreign, caplog):
  import types
  ds, _ = meds.read_meds(foreign)
  cfg = _cfg(foreign)
  common = cohorts.Cohort("htn", "HTN", "Hypertension", ("ICD10CM/I10",), 0.0, False)
  ctx = types.SimpleNamespace(cfg=cfg, dataset=ds, cohort=common)
  with caplog.at_level("WARNING"):
    percent = pipeline.warn_if_not_rare(ctx)
  train = ds.subset("train")
  assert percent == pytest.approx(100 * train.patients_with_any(common.codes).mean()) and percent > 5
  assert "not a rare condition" in caplog.text
  caplog.clear()
  cfg.rare_warn_percent = 100.0
  with caplog.at_level("WARNING"):
    pipeline.warn_if_not_rare(ctx)
  assert "not a rare condition" not in caplog.text


def test_an_aces_task_config_gives_the_labels_aces_extracts(tmp_path, foreign):
  """A full task config: one label per admission (trigger), true when a sepsis code falls within 3
  days of it; es-aces extracts them; the code set is the label predicate's codes."""
  text = foreign_meds.SEPSIS_ACES.replace("metadata:\n  predicate: sepsis\n", "") + (
      "  admission:\n    code: {regex: '^HOSPITAL_ADMISSION//'}\n"
      "trigger: admission\nwindows:\n  stay:\n    start: trigger\n    end: start + 3d\n"
      "    start_inclusive: true\n    end_inclusive: true\n    label: sepsis\n    index_timestamp: start\n")
  ds, _ = meds.read_meds(foreign)
  definition = cohorts.read_definition(_aces_file(tmp_path, text, "task.yaml"))
  assert definition["task"]["label"] == "sepsis"
  cohort, _ = cohorts.resolve(definition, ds.codes, scan_meds(foreign))
  assert cohort.codes == ("ICD10CM/A4151", "ICD10CM/A419", "ICD9CM/03849", "ICD9CM/0389",
                          "ICD9CM/78552", "ICD9CM/99592")
  labels = cohorts.aces_task_labels(definition, foreign, ds.subject_id)
  import meds as meds_package
  meds_package.LabelSchema.validate(labels)
  assert labels.num_rows == 2 * foreign_meds.NUM_SUBJECTS  # two admissions each
  positive = [s for s, b in zip(labels.column("subject_id").to_pylist(),
                                labels.column("boolean_value").to_pylist()) if b]
  assert sorted(positive) == sorted(foreign_meds.SEPSIS_SUBJECTS)  # the second stay's, once each
  members = cohorts.aces_members(definition, foreign, ds.subject_id)
  assert set(ds.subject_id[members].tolist()) == set(foreign_meds.SEPSIS_SUBJECTS)
