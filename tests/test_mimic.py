"""MIMIC-IV reader on the 100-patient demo (skipped when ../shared is absent) and on small tables."""

import csv
import datetime
import gzip
import subprocess
import sys
import types

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from conftest import REPO, shared_path
from rltf_jax.data import meds, mimic
from rltf_jax.data.codes import CodeType
from rltf_jax.data.cohorts import cohort_membership, get_cohort
from rltf_jax.data.events import assign_splits
from rltf_jax.data.load import load_dataset
from rltf_jax.errors import ConfigError

DEMO = ("data", "mimic-iv-demo-2.2")
EPOCH = datetime.date(1970, 1, 1)


@pytest.fixture(scope="module")
def demo_dir():
  return shared_path(*DEMO)


@pytest.fixture(scope="module")
def demo(demo_dir):
  return mimic.read_mimic(demo_dir)


def _rows(demo_dir, name):
  with gzip.open(demo_dir / "hosp" / f"{name}.csv.gz", "rt", newline="") as f:
    return list(csv.DictReader(f))


def _day(text):
  return (datetime.date.fromisoformat(text[:10]) - EPOCH).days


def test_demo_patients_visits_and_diagnoses(demo, demo_dir):
  assert demo.num_patients == 100
  visits = sum(len(np.unique(demo.patient(p)["visit"])) for p in range(demo.num_patients))
  assert visits == 275
  assert sum(int(demo.patient(p)["visit"].max()) + 1 for p in range(100)) == 275
  types = demo.code_type[demo.code]
  assert (types == CodeType.DIAGNOSIS).sum() == 2313
  assert (types == CodeType.DIAGNOSIS_ICD9).sum() == 2193
  assert (types == CodeType.PROCEDURE).sum() + (types == CodeType.PROCEDURE_ICD9).sum() == 722
  # Every diagnosis row is an event of its patient on the admission's day, counted as often.
  admit_day = {r["hadm_id"]: (int(r["subject_id"]), _day(r["admittime"]))
               for r in _rows(demo_dir, "admissions")}
  expected = {}
  for r in _rows(demo_dir, "diagnoses_icd"):
    key = (*admit_day[r["hadm_id"]], f"ICD{r['icd_version']}CM/{r['icd_code']}")
    expected[key] = expected.get(key, 0) + 1
  got = {}
  is_dx = np.isin(types, [CodeType.DIAGNOSIS, CodeType.DIAGNOSIS_ICD9])
  pat = demo.event_patient()
  for p, d, c in zip(pat[is_dx], demo.day[is_dx], demo.codes[demo.code[is_dx]]):
    key = (int(demo.subject_id[p]), int(d), str(c))
    got[key] = got.get(key, 0) + 1
  assert got == expected


def test_demo_demographics_ages_and_order(demo):
  # patients.csv: 10014729,F,21,2125 -> born 2104-01-01; 10003400,F,72,2134 -> 2062.
  for sid, year in ((10014729, 2104), (10003400, 2062)):
    p = int(np.flatnonzero(demo.subject_id == sid)[0])
    assert demo.sex[p] == 0
    assert demo.birth_day[p] == (datetime.date(year, 1, 1) - EPOCH).days
  assert set(np.unique(demo.sex)) == {0, 1}
  assert np.all(np.diff(demo.subject_id) > 0)
  assert demo.age.min() >= 0 and demo.age.max() <= 110
  same_patient = np.diff(demo.event_patient()) == 0
  assert np.all(np.diff(demo.age)[same_patient] >= 0)
  assert np.all(np.diff(demo.visit)[same_patient] >= 0)


def test_demo_places_of_service_follow_admissions(demo, demo_dir):
  by_subject = {}
  for r in _rows(demo_dir, "admissions"):
    by_subject.setdefault(int(r["subject_id"]), []).append(
        (r["admittime"], mimic.place_of_service(r["admission_type"], r["admission_location"])))
  for p in range(demo.num_patients):
    ev = demo.patient(p)
    expected = [pos for _, pos in sorted(by_subject[int(ev["subject_id"])])]
    assert [int(ev["pos"][ev["visit"] == v][0]) for v in range(len(expected))] == expected
  assert set(np.unique(demo.pos)) == {21, 22, 23}


def test_place_of_service_mapping():
  assert mimic.place_of_service("EW EMER.", "EMERGENCY ROOM") == 23
  assert mimic.place_of_service("EW EMER.", "TRANSFER FROM HOSPITAL") == 23
  assert mimic.place_of_service("URGENT", "EMERGENCY ROOM") == 23
  assert mimic.place_of_service("EU OBSERVATION", "EMERGENCY ROOM") == 22
  assert mimic.place_of_service("SURGICAL SAME DAY ADMISSION", "PHYSICIAN REFERRAL") == 22
  assert mimic.place_of_service("AMBULATORY OBSERVATION", "PACU") == 22
  assert mimic.place_of_service("ELECTIVE", "PHYSICIAN REFERRAL") == 21
  assert mimic.place_of_service("DIRECT EMER.", "CLINIC REFERRAL") == 21
  assert mimic.place_of_service(None, None) == 21


def test_demo_prescriptions(demo, demo_dir):
  assert mimic.drug_code("HYDROmorphone (Dilaudid)") == "DRUG/HYDROMORPHONE_DILAUDID"
  assert mimic.drug_code("0.9% Sodium Chloride") == "DRUG/0.9%_SODIUM_CHLORIDE"
  # One event per (admission, start day, drug), BASE solutions left out: counted independently.
  # A start day is clipped to [admission day, next admission's day].
  by_subject = {}
  for r in _rows(demo_dir, "admissions"):
    by_subject.setdefault(r["subject_id"], []).append((r["admittime"], r["hadm_id"]))
  span = {}
  for stays in by_subject.values():
    stays.sort()
    for i, (t, hadm) in enumerate(stays):
      span[hadm] = (_day(t), _day(stays[i + 1][0]) if i + 1 < len(stays) else 10**9)
  expected = {(r["hadm_id"], min(max(_day(r["starttime"]), span[r["hadm_id"]][0]),
                                 span[r["hadm_id"]][1]), mimic.drug_code(r["drug"]))
              for r in _rows(demo_dir, "prescriptions") if r["drug_type"] != "BASE"}
  meds_mask = demo.code_type[demo.code] == CodeType.MEDICATION
  assert meds_mask.sum() == len(expected) == 10886
  assert "DRUG/BAG" not in set(demo.codes[demo.code])


def test_demo_cohorts_have_positives(demo):
  for name in ("sep", "ami", "shock", "dm"):
    assert cohort_membership(demo, get_cohort(name)).sum() > 0, name
  assert cohort_membership(demo, get_cohort("scd")).sum() == 0  # as the data README says


def test_demo_round_trips_through_meds(demo, tmp_path):
  back, has_splits = meds.read_meds(meds.write_meds(demo, tmp_path / "m"))
  assert has_splits and back.equals(demo)


def test_converter_cli_writes_meds_without_splits(demo, demo_dir, tmp_path):
  out = tmp_path / "demo_meds"
  r = subprocess.run([sys.executable, "-m", "rltf_jax.data.meds", "--convert-mimic", str(demo_dir),
                      "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert "100 patients" in r.stdout
  back, has_splits = meds.read_meds(out)
  assert not has_splits and back.equals(demo)
  codes = pcsv.read_csv(demo_dir / "hosp" / "d_icd_diagnoses.csv.gz",
                        convert_options=pcsv.ConvertOptions(column_types={"icd_code": pa.string()}))
  titles = dict(zip(codes.column("icd_code").to_pylist(), codes.column("long_title").to_pylist()))
  table = pq.read_table(out / "metadata" / "codes.parquet").to_pylist()
  described = {r["code"]: r["description"] for r in table}
  code = next(c for c in back.codes if c.startswith("ICD10CM/"))
  assert described[code] == titles[code.split("/", 1)[1]]


def test_row_order_of_the_tables_does_not_matter(demo, demo_dir, tmp_path):
  rng = np.random.default_rng(0)
  for name in ("patients", "admissions", *mimic.EVENT_TABLES):
    t = pcsv.read_csv(demo_dir / "hosp" / f"{name}.csv.gz",
                      convert_options=pcsv.ConvertOptions(
                          column_types={c: pa.string() for c in ("icd_code", "ndc")}))
    pcsv.write_csv(t.take(rng.permutation(len(t))), tmp_path / f"{name}.csv")
  assert mimic.read_mimic(tmp_path).equals(demo)


def test_small_tables_hand_checked(tmp_path):
  (tmp_path / "patients.csv").write_text(
      "subject_id,gender,anchor_age,anchor_year\n2,M,30,2100\n1,F,50,2110\n3,,40,2100\n")
  (tmp_path / "admissions.csv").write_text(
      "subject_id,hadm_id,admittime,admission_type,admission_location\n"
      "1,11,2110-05-01 10:00:00,EW EMER.,EMERGENCY ROOM\n"
      "1,10,2110-02-01 23:00:00,ELECTIVE,PHYSICIAN REFERRAL\n"
      "2,20,2101-01-01 00:00:00,EU OBSERVATION,EMERGENCY ROOM\n"
      "9,90,2101-01-01 00:00:00,URGENT,CLINIC REFERRAL\n")  # subject 9 is not a patient
  (tmp_path / "diagnoses_icd.csv").write_text(
      "subject_id,hadm_id,seq_num,icd_code,icd_version\n"
      "1,11,2,I214,10\n1,11,1,A419,10\n1,10,1,0389,9\n2,20,1,R579,10\n9,90,1,I10,10\n")
  (tmp_path / "procedures_icd.csv").write_text(
      "subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n"
      "1,10,1,2110-01-30,3893,9\n"     # before the admission day: clipped to it
      "1,10,2,2110-06-01,0DTJ4ZZ,10\n")  # after the next admission: clipped to its day
  (tmp_path / "prescriptions.csv").write_text(
      "subject_id,hadm_id,starttime,drug_type,drug\n"
      "1,10,2110-02-02 08:00:00,MAIN,Insulin\n1,10,2110-02-02 20:00:00,MAIN,Insulin\n"
      "1,10,2110-02-02 09:00:00,BASE,Bag\n1,10,,MAIN,Heparin\n1,,2110-02-02 09:00:00,MAIN,X\n")
  ds = mimic.read_mimic(tmp_path)
  day = lambda s: (datetime.date.fromisoformat(s) - EPOCH).days
  assert list(ds.subject_id) == [1, 2, 3] and list(ds.sex) == [0, 1, -1]
  assert list(ds.birth_day) == [day("2060-01-01"), day("2070-01-01"), day("2060-01-01")]
  p = ds.patient(0)
  assert list(p["code"]) == ["ICD9CM/0389", "ICD9PCS/3893", "DRUG/HEPARIN", "DRUG/INSULIN",
                             "ICD10PCS/0DTJ4ZZ", "ICD10CM/A419", "ICD10CM/I214"]
  assert list(p["day"]) == [day("2110-02-01")] * 3 + [day("2110-02-02")] + [day("2110-05-01")] * 3
  assert list(p["visit"]) == [0, 0, 0, 0, 0, 1, 1]
  assert list(p["pos"]) == [21, 21, 21, 21, 21, 23, 23]
  assert list(ds.patient(1)["code"]) == ["ICD10CM/R579"] and list(ds.patient(1)["pos"]) == [22]
  assert ds.lengths[2] == 0  # no admissions: kept, no events
  # Only some tables.
  only_dx = mimic.read_mimic(tmp_path, tables=("diagnoses_icd",))
  assert only_dx.num_events == 4


def test_load_dataset_assigns_hash_splits_to_mimic(demo_dir):
  cfg = types.SimpleNamespace(source="mimic", path=str(demo_dir), bare_code_system="ICD10CM",
                              split_fractions=(0.8, 0.1, 0.1), split_seed=0,
                              include=("diagnoses", "procedures", "medications"), value_bins=5,
                              value_min_count=20)
  ds = load_dataset(cfg)
  assert np.array_equal(ds.split, assign_splits(ds.subject_id, (0.8, 0.1, 0.1), 0))
  # The reader emits only the paper's families: the default include drops nothing.
  assert ds.equals(mimic.read_mimic(demo_dir).with_splits(ds.split))
  cfg.include = ("diagnoses", "labs")
  with pytest.raises(ConfigError, match="not labevents"):
    load_dataset(cfg)
