"""Bad input to the data layer: each case gets an error naming the file, column or cohort and
saying what to do; the converter exits non-zero and leaves no partial output behind."""

import gzip
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from rltf_jax.data import meds, mimic
from rltf_jax.data.cohorts import get_cohort, require_positives
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError, DataError

DAY_US = 86_400 * 10**6


def _shard(path, **columns):
  path.parent.mkdir(parents=True, exist_ok=True)
  pq.write_table(pa.table(columns), path)
  return path


def _good_columns(n=2):
  return dict(subject_id=pa.array([1] * n, pa.int64()),
              time=pa.array([0] + [DAY_US * 10_000] * (n - 1), pa.timestamp("us")),
              code=pa.array(["MEDS_BIRTH"] + ["ICD10CM/I10"] * (n - 1)))


def _mimic_tables(root, **override):
  """A minimal valid MIMIC-IV hosp/ folder; `override` replaces a table's text."""
  tables = dict(
      patients="subject_id,gender,anchor_age,anchor_year\n1,F,50,2110\n",
      admissions="subject_id,hadm_id,admittime,admission_type,admission_location\n"
                 "1,10,2110-02-01 10:00:00,URGENT,EMERGENCY ROOM\n",
      diagnoses_icd="subject_id,hadm_id,seq_num,icd_code,icd_version\n1,10,1,A419,10\n",
      procedures_icd="subject_id,hadm_id,seq_num,chartdate,icd_code,icd_version\n",
      prescriptions="subject_id,hadm_id,starttime,drug_type,drug\n")
  tables.update(override)
  hosp = root / "hosp"
  hosp.mkdir(parents=True)
  for name, text in tables.items():
    (hosp / f"{name}.csv").write_text(text)
  return root


# ---------------------------------------------------------------- missing column
def test_meds_shard_missing_code_column(tmp_path):
  cols = _good_columns()
  del cols["code"]
  bad = _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=rf"{bad}: MEDS column 'code' is missing.*needs subject_id"):
    meds.read_meds(tmp_path / "m")


def test_mimic_table_missing_column(tmp_path):
  root = _mimic_tables(tmp_path / "mimic",
                       patients="subject_id,gender,anchor_age\n1,F,50\n")
  with pytest.raises(DataError, match=r"patients.csv: column 'anchor_year' is missing"):
    mimic.read_mimic(root)


def test_mimic_table_file_missing(tmp_path):
  root = _mimic_tables(tmp_path / "mimic")
  (root / "hosp" / "admissions.csv").unlink()
  with pytest.raises(DataError, match=r"table admissions.csv.gz \(or admissions.csv\) is missing"):
    mimic.read_mimic(root)


# ---------------------------------------------------------------- wrong dtype
def test_meds_subject_id_of_wrong_dtype(tmp_path):
  cols = _good_columns()
  cols["subject_id"] = pa.array(["1", "1"], pa.string())
  bad = _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=rf"{bad}: column 'subject_id' has type string, expected an "
                                      r"integer"):
    meds.read_meds(tmp_path / "m")


def test_meds_time_of_wrong_dtype(tmp_path):
  cols = _good_columns()
  cols["time"] = pa.array(["2020-01-01", "2020-01-02"])
  _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=r"column 'time' has type string, expected a timestamp"):
    meds.read_meds(tmp_path / "m")


def test_mimic_column_of_wrong_dtype(tmp_path):
  root = _mimic_tables(tmp_path / "mimic",
                       patients="subject_id,gender,anchor_age,anchor_year\nabc,F,50,2110\n")
  with pytest.raises(DataError, match=r"patients.csv: cannot parse the table.*subject_id int64"):
    mimic.read_mimic(root)


def test_meds_null_codes_are_refused(tmp_path):
  cols = _good_columns()
  cols["code"] = pa.array(["MEDS_BIRTH", None], pa.string())
  bad = _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=rf"{bad}: column 'code' has 1 null values"):
    meds.read_meds(tmp_path / "m")


# ---------------------------------------------------------------- unsorted times
def test_unsorted_times_in_arrays_are_refused():
  # Readers sort their rows; arrays handed to `build` directly must already be sorted.
  with pytest.raises(DataError, match=r"events.npz: events of subject 7 are not sorted by time; "
                                      r"sort each subject's rows"):
    PatientEvents.build(subject_id=[7], sex=[0], birth_day=[0], offsets=[0, 2], code=[0, 1],
                        day=[5, 4], visit=[0, 0], pos=[0, 0], codes=["ICD10CM/A", "ICD10CM/B"],
                        source="events.npz")


def test_unsorted_meds_rows_are_sorted_by_the_reader(tmp_path):
  _shard(tmp_path / "m" / "data" / "0.parquet",
         subject_id=pa.array([2, 1, 1, 2, 1], pa.int64()),
         time=pa.array([DAY_US * 20, DAY_US * 30, 0, 0, DAY_US * 10], pa.timestamp("us")),
         code=pa.array(["ICD10CM/B", "ICD10CM/C", "MEDS_BIRTH", "MEDS_BIRTH", "ICD10CM/A"]))
  ds, _ = meds.read_meds(tmp_path / "m")
  assert list(ds.subject_id) == [1, 2]
  assert list(ds.codes[ds.code]) == ["ICD10CM/A", "ICD10CM/C", "ICD10CM/B"]
  assert list(ds.day) == [10, 30, 20] and list(ds.visit) == [0, 1, 0]


def test_meds_visit_column_contradicting_time_order(tmp_path):
  # With an explicit `visit` column, visits must not decrease once rows are in time order.
  cols = _good_columns(3)
  cols["time"] = pa.array([0, DAY_US * 100, DAY_US * 200], pa.timestamp("us"))
  cols["visit"] = pa.array([None, 1, 0], pa.int32())
  cols["place_of_service"] = pa.array([None, 11, 11], pa.int16())
  _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=r"data: visit indices of subject 1 decrease"):
    meds.read_meds(tmp_path / "m")


def test_meds_visit_column_null_on_an_event(tmp_path):
  cols = dict(_good_columns(), visit=pa.array([None, None], pa.int32()))
  _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=r"column 'visit' is null on an event row of subject 1"):
    meds.read_meds(tmp_path / "m")


def test_meds_extra_column_in_only_some_shards(tmp_path):
  cols = _good_columns()
  _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  cols = dict(cols, subject_id=pa.array([2, 2], pa.int64()), visit=pa.array([None, 0], pa.int32()))
  _shard(tmp_path / "m" / "data" / "1.parquet", **cols)
  with pytest.raises(DataError, match=r"0.parquet: column 'visit' is absent although other shards"):
    meds.read_meds(tmp_path / "m")


# ---------------------------------------------------------------- empty files
def test_empty_parquet_file(tmp_path):
  bad = tmp_path / "m" / "data" / "0.parquet"
  bad.parent.mkdir(parents=True)
  bad.write_bytes(b"")
  with pytest.raises(DataError, match=rf"{bad}: the file is empty \(0 bytes\)"):
    meds.read_meds(tmp_path / "m")


def test_meds_without_rows_or_shards(tmp_path):
  (tmp_path / "m" / "data").mkdir(parents=True)
  with pytest.raises(DataError, match=r"data: no .parquet shards found"):
    meds.read_meds(tmp_path / "m")
  cols = {k: v.slice(0, 0) for k, v in _good_columns().items()}
  _shard(tmp_path / "m" / "data" / "0.parquet", **cols)
  with pytest.raises(DataError, match=r"the shards hold no rows"):
    meds.read_meds(tmp_path / "m")
  with pytest.raises(DataError, match=r"not a MEDS directory \(no data/ folder\)"):
    meds.read_meds(tmp_path)


def test_empty_csv_files(tmp_path):
  root = _mimic_tables(tmp_path / "a", admissions="")
  with pytest.raises(DataError, match=r"admissions.csv: the file is empty \(0 bytes\)"):
    mimic.read_mimic(root)
  root = _mimic_tables(tmp_path / "b")
  (root / "hosp" / "patients.csv").unlink()
  with gzip.open(root / "hosp" / "patients.csv.gz", "wt") as f:
    f.write("")  # a valid gzip stream holding nothing
  with pytest.raises(DataError, match=r"patients.csv.gz: the file is empty \(no header line\)"):
    mimic.read_mimic(root)
  root = _mimic_tables(tmp_path / "c", patients="subject_id,gender,anchor_age,anchor_year\n")
  with pytest.raises(DataError, match=r"patients.csv: no patients"):
    mimic.read_mimic(root)


# ---------------------------------------------------------------- corrupt files
def test_corrupt_parquet_file(tmp_path):
  bad = tmp_path / "m" / "data" / "0.parquet"
  bad.parent.mkdir(parents=True)
  bad.write_text("subject_id,time,code\n1,2020-01-01,ICD10CM/I10\n")  # a CSV named .parquet
  with pytest.raises(DataError, match=rf"{bad}: not a readable parquet file"):
    meds.read_meds(tmp_path / "m")


def test_corrupt_splits_file(tmp_path):
  _shard(tmp_path / "m" / "data" / "0.parquet", **_good_columns())
  bad = tmp_path / "m" / "metadata" / "subject_splits.parquet"
  bad.parent.mkdir()
  bad.write_bytes(b"PAR1 garbage")
  with pytest.raises(DataError, match=rf"{bad}: not a readable parquet file"):
    meds.read_meds(tmp_path / "m")


def test_corrupt_gzip_csv(tmp_path):
  root = _mimic_tables(tmp_path / "mimic")
  (root / "hosp" / "diagnoses_icd.csv").unlink()
  (root / "hosp" / "diagnoses_icd.csv.gz").write_bytes(b"\x1f\x8b\x08\x00 not really gzip")
  with pytest.raises(DataError, match=r"diagnoses_icd.csv.gz: cannot read the CSV header"):
    mimic.read_mimic(root)


# ---------------------------------------------------------------- cohorts
def test_unknown_cohort_name():
  with pytest.raises(ConfigError, match=r"unknown cohort 'sickle'; choose one of: sep, .*scd"):
    get_cohort("sickle")
  assert get_cohort("SCD").name == "scd"


def test_cohort_without_positive_patient(tiny_dataset):
  with pytest.raises(DataError, match=r"cohort 'ami' \(Acute Myocardial Infarction\) has no "
                                      r"positive patient in the training split.*choose another"):
    require_positives(tiny_dataset, get_cohort("ami"), "the training split")
  assert list(require_positives(tiny_dataset, get_cohort("scd"), "all")) == [False, True, False]


# ---------------------------------------------------------------- no partial output
def test_converter_cli_fails_cleanly_and_writes_nothing(tmp_path):
  src = _mimic_tables(tmp_path / "mimic",
                      diagnoses_icd="subject_id,hadm_id,seq_num,icd_version\n1,10,1,10\n")
  dst = tmp_path / "out" / "meds"
  r = subprocess.run([sys.executable, "-m", "rltf_jax.data.meds", "--convert-mimic", str(src),
                      "--out", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2
  assert "error:" in r.stderr and "diagnoses_icd.csv: column 'icd_code' is missing" in r.stderr
  assert "Traceback" not in r.stderr
  assert not dst.exists() and not (dst.parent.exists() and any(dst.parent.iterdir()))


def test_converter_cli_refuses_existing_output(tmp_path):
  src = _mimic_tables(tmp_path / "mimic")
  dst = tmp_path / "meds"
  dst.mkdir()
  (dst / "keep.txt").write_text("finished work")
  r = subprocess.run([sys.executable, "-m", "rltf_jax.data.meds", "--convert-mimic", str(src),
                      "--out", str(dst)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and "already exists" in r.stderr
  assert [p.name for p in dst.iterdir()] == ["keep.txt"]


def test_writer_failure_leaves_no_partial_directory(tmp_path, tiny_dataset, monkeypatch):
  real_write = pq.write_table

  def failing_write(table, where, *args, **kwargs):
    if str(where).endswith("codes.parquet"):  # after the data shard was written
      raise OSError("disk full")
    return real_write(table, where, *args, **kwargs)

  monkeypatch.setattr(meds.pq, "write_table", failing_write)
  with pytest.raises(OSError, match="disk full"):
    meds.write_meds(tiny_dataset, tmp_path / "m")
  assert list(tmp_path.iterdir()) == []
  # An existing directory survives a failed overwrite untouched.
  monkeypatch.setattr(meds.pq, "write_table", real_write)
  meds.write_meds(tiny_dataset, tmp_path / "m")
  monkeypatch.setattr(meds.pq, "write_table", failing_write)
  with pytest.raises(OSError):
    meds.write_meds(tiny_dataset.select([0]), tmp_path / "m", overwrite=True)
  assert meds.read_meds(tmp_path / "m")[0].equals(tiny_dataset)
  assert [p.name for p in tmp_path.iterdir()] == ["m"]
  assert np.all(meds.read_meds(tmp_path / "m")[0].split == tiny_dataset.split)


# ---------------------------------------------------------------- misdated rows, odd codes, duplicates
def _year_us(year):
  return int((np.datetime64(f"{year}-06-01", "D") - np.datetime64("1970-01-01", "D")).astype(np.int64)) * DAY_US


def _meds_rows(tmp_path, times, codes):
  return _shard(tmp_path / "m" / "data" / "0.parquet", subject_id=pa.array([15] * len(codes), pa.int64()),
                time=pa.array(times, pa.timestamp("us")), code=pa.array(codes))


@pytest.mark.parametrize("year, what", [(1800, "before its birth"), (2200, "more than 130 years after")])
def test_meds_events_before_birth_or_far_in_the_future_are_refused(tmp_path, year, what):
  _meds_rows(tmp_path, [_year_us(1960), _year_us(2000), _year_us(year)],
             ["MEDS_BIRTH", "ICD10CM/I10", "ICD10CM/E119"])
  with pytest.raises(DataError, match=rf"subject 15 has an event on {year}-06-01 \(code ICD10CM/E119\) {what}"):
    meds.read_meds(tmp_path / "m")


def test_mimic_events_before_birth_are_refused(tmp_path):
  root = _mimic_tables(tmp_path / "mimic", admissions=(
      "subject_id,hadm_id,admittime,admission_type,admission_location\n"
      "1,10,1800-02-01 10:00:00,URGENT,EMERGENCY ROOM\n"))
  with pytest.raises(DataError, match=r"subject 1 has an event on 1800-02-01 .* before its birth"):
    mimic.read_mimic(root)


def test_meds_empty_codes_are_dropped_with_a_count(tmp_path, caplog):
  t = _year_us(2000)
  _meds_rows(tmp_path, [_year_us(1960), t, t, t], ["MEDS_BIRTH", "ICD10CM/I10", "  ", ""])
  with caplog.at_level("WARNING"):
    ds, _ = meds.read_meds(tmp_path / "m")
  assert ds.num_events == 1 and list(ds.codes[ds.code]) == ["ICD10CM/I10"]
  assert "2 rows with an empty or whitespace code are dropped" in caplog.text


def test_meds_duplicated_rows_of_two_visits_on_one_day_read_as_repeated_events(tmp_path):
  # Two visits on one day, every row written twice: used to fail with "visit indices decrease".
  t = _year_us(2000)
  rows = dict(subject_id=pa.array([15] * 3, pa.int64()), time=pa.array([_year_us(1960), t, t], pa.timestamp("us")),
              code=pa.array(["MEDS_BIRTH", "ICD10CM/I10", "ICD10CM/E119"]),
              visit=pa.array([0, 0, 1], pa.int64()), place_of_service=pa.array([0, 11, 23], pa.int64()))
  table = pa.table(rows)
  (tmp_path / "m" / "data").mkdir(parents=True)
  pq.write_table(pa.concat_tables([table, table]), tmp_path / "m" / "data" / "0.parquet")
  ds, _ = meds.read_meds(tmp_path / "m")
  assert list(ds.visit) == [0, 0, 1, 1] and list(ds.codes[ds.code]) == ["ICD10CM/I10"] * 2 + ["ICD10CM/E119"] * 2


def test_meds_code_longer_than_the_limit_is_refused(tmp_path):
  _meds_rows(tmp_path, [_year_us(1960), _year_us(2000)], ["MEDS_BIRTH", "X" * 10_000])
  with pytest.raises(DataError, match=r"subject 15 has a code of 10000 characters"):
    meds.read_meds(tmp_path / "m")
