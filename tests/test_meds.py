"""MEDS reader and writer: schema, hand-checked rows, round trips, foreign spellings, splits."""

import datetime
import json
import logging
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rltf_jax.data import meds
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.load import load_dataset, load_with_report
from rltf_jax.errors import ConfigError, DataError

_US_PER_DAY = 86_400 * 10**6


def _day_us(y, m, d):
  return (datetime.date(y, m, d) - datetime.date(1970, 1, 1)).days * _US_PER_DAY


def _write_shard(path, rows, **extra):
  """A MEDS shard from (subject_id, time_us or None, code) rows, in the given order."""
  path.parent.mkdir(parents=True, exist_ok=True)
  sid, time, code = zip(*rows)
  cols = {"subject_id": pa.array(sid, pa.int64()), "time": pa.array(time, pa.timestamp("us")),
          "code": pa.array(code, pa.string()),
          "numeric_value": pa.nulls(len(rows), pa.float32())}
  cols.update(extra)
  pq.write_table(pa.table(cols), path)


def _data_cfg(path, **overrides):
  """The data fields `load_dataset` reads, for a MEDS directory, at their configs/base.py defaults."""
  fields = dict(source="meds", path=str(path), bare_code_system="ICD10CM",
                split_fractions=(0.8, 0.1, 0.1), split_seed=0,
                include=("diagnoses", "procedures", "medications"), value_bins=5, value_min_count=20)
  return types.SimpleNamespace(**dict(fields, **overrides))


def random_dataset(num_patients, seed):
  rng = np.random.default_rng(seed)
  codes = np.array(["ICD10CM/D573", "ICD10CM/E119", "ICD9CM/4019", "ICD10PCS/0DTJ4ZZ",
                    "CCSPX/47", "ATC/A10BA02", "DRUG/INSULIN", "OTHER/LAB_X"] +
                   [f"ICD10CM/Z{i:03d}" for i in range(40)])
  lens = rng.integers(0, 40, num_patients)
  lens[:3] = 0
  offsets = np.concatenate([[0], np.cumsum(lens)])
  day, visit = [], []
  for n in lens:
    # Visits on increasing days, several events per visit; two visits may share a day.
    v = np.sort(rng.integers(0, max(n // 3, 1), n))
    visit_day = np.cumsum(rng.integers(0, 60, (v.max() + 1) if n else 0)) + 15_000
    visit.append(v)
    day.append(visit_day[v] if n else np.zeros(0, int))
  pos_choices = np.array([0, 11, 21, 22, 23, 81])
  ev_visit = np.concatenate(visit)
  return PatientEvents.build(
      subject_id=np.sort(rng.choice(10**9, num_patients, replace=False)) + 5,
      sex=rng.integers(-1, 2, num_patients), birth_day=rng.integers(-20_000, 14_000, num_patients),
      offsets=offsets, code=rng.integers(0, len(codes), offsets[-1]), day=np.concatenate(day),
      visit=ev_visit, pos=pos_choices[rng.integers(0, 6, offsets[-1])], codes=codes,
      split=rng.integers(0, 3, num_patients))


def test_writer_layout_and_rows(tmp_path, tiny_dataset):
  out = meds.write_meds(tiny_dataset, tmp_path / "meds")
  assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
      "data/0.parquet", "metadata/codes.parquet", "metadata/dataset.json",
      "metadata/subject_splits.parquet"]
  t = pq.read_table(out / "data" / "0.parquet")
  assert t.schema.field("subject_id").type == pa.int64()
  assert t.schema.field("time").type == pa.timestamp("us")
  assert t.schema.field("code").type == pa.string()
  assert t.schema.field("numeric_value").type == pa.float32()
  rows = t.to_pylist()
  # Patient 10: female, born 1970-01-01, events on day 10000 (1997-05-19) and 10400.
  assert [(r["subject_id"], r["code"], r["time"], r["visit"], r["place_of_service"])
          for r in rows[:5]] == [
      (10, "GENDER//F", None, None, None),
      (10, "MEDS_BIRTH", datetime.datetime(1970, 1, 1), None, None),
      (10, "ICD10CM/E119", datetime.datetime(1997, 5, 19), 0, 11),
      (10, "ICD10CM/I10", datetime.datetime(1997, 5, 19), 0, 11),
      (10, "ATC/A10BA02", datetime.datetime(1998, 6, 23), 1, 11)]
  # Patient 12 has unknown sex and no events: a single birth row (1990-01-01 = day 7305).
  assert [(r["code"], r["time"]) for r in rows if r["subject_id"] == 12] == [
      ("MEDS_BIRTH", datetime.datetime(1990, 1, 1))]
  assert len(rows) == 2 + 3 + 2 + 4 + 1
  splits = pq.read_table(out / "metadata" / "subject_splits.parquet").to_pylist()
  assert splits == [{"subject_id": 10, "split": "train"}, {"subject_id": 11, "split": "train"},
                    {"subject_id": 12, "split": "held_out"}]
  codes = set(pq.read_table(out / "metadata" / "codes.parquet").column("code").to_pylist())
  assert set(tiny_dataset.codes) | {"MEDS_BIRTH", "GENDER//F", "GENDER//M"} == codes
  meta = json.loads((out / "metadata" / "dataset.json").read_text())
  assert meta["meds_version"] == meds.MEDS_VERSION and meta["etl_name"] == "rltf_jax"


def test_round_trip_tiny(tmp_path, tiny_dataset):
  back, has_splits = meds.read_meds(meds.write_meds(tiny_dataset, tmp_path / "m"))
  assert has_splits and back.equals(tiny_dataset)
  np.testing.assert_allclose(back.age, tiny_dataset.age)


def test_round_trip_random_sharded(tmp_path):
  ds = random_dataset(300, seed=1)
  out = meds.write_meds(ds, tmp_path / "m", subjects_per_shard=64)
  assert sorted(p.name for p in (out / "data").iterdir()) == [f"{i}.parquet" for i in range(5)]
  back, has_splits = meds.read_meds(out)
  assert has_splits and back.equals(ds)
  assert not back.equals(random_dataset(300, seed=2))


def test_patients_come_back_in_subject_order(tmp_path, tiny_dataset):
  shuffled = tiny_dataset.select([2, 0, 1])
  back, _ = meds.read_meds(meds.write_meds(shuffled, tmp_path / "m"))
  assert list(back.subject_id) == [10, 11, 12] and back.equals(tiny_dataset)


def test_foreign_meds_spellings_visits_and_meta_codes(tmp_path, caplog):
  d = tmp_path / "foreign"
  e119 = ["ICD10CM/E11.9", "DIAGNOSIS//ICD//10//E119", "E119"]
  rows = [
      # Subject 7, rows deliberately out of time order; times within days, ms apart.
      (7, _day_us(2020, 3, 2) + 5_000, "DIAGNOSIS//ICD//9//4019"),
      (7, _day_us(2020, 3, 1) + 3_600 * 10**6, e119[0]),
      (7, None, "SEX//F"),
      (7, _day_us(1950, 6, 1), "MEDS_BIRTH"),
      (7, _day_us(2020, 3, 1), "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM"),
      (7, _day_us(2020, 3, 1) + 7_200 * 10**6, e119[1]),
      (7, _day_us(2020, 3, 5), "HOSPITAL_DISCHARGE//HOME"),
      (7, _day_us(2021, 1, 1), e119[2]),
      (7, _day_us(2021, 1, 2), "MEDS_DEATH"),
      (7, None, "RACE//WHITE"),  # other static rows are dropped
      # Subject 3 has no birth row: dropped with a warning.
      (3, _day_us(2019, 1, 1), "ICD10CM/I10"),
  ]
  _write_shard(d / "data" / "part-0.parquet", rows)
  # A second shard in a sub-folder, time as timestamp[ms] with a time zone.
  (d / "data" / "more").mkdir()
  pq.write_table(pa.table({
      "subject_id": pa.array([9, 9], pa.int64()),
      "time": pa.array([_day_us(1990, 1, 1) // 1000, _day_us(2000, 1, 1) // 1000],
                       pa.timestamp("ms", tz="UTC")),
      "code": pa.array(["MEDS_BIRTH", "GENDER//M"], pa.string())}), d / "data" / "more" / "x.parquet")
  with caplog.at_level(logging.WARNING):
    ds, has_splits = meds.read_meds(d)
  assert "subject 3" in caplog.text and "1 of 3 subjects" in caplog.text
  # The official schema wants timestamp[us]: the variant is reported, then read after casting.
  assert "x.parquet: the data shard does not match the MEDS" in caplog.text and "timestamp[ms" in caplog.text
  assert not has_splits
  assert list(ds.subject_id) == [7, 9] and list(ds.sex) == [0, 1]
  p = ds.patient(0)
  assert list(p["code"]) == ["ICD10CM/E119", "ICD10CM/E119", "ICD9CM/4019", "ICD10CM/E119"]
  day0 = (datetime.date(2020, 3, 1) - datetime.date(1970, 1, 1)).days
  assert list(p["day"]) == [day0, day0, day0 + 1, day0 + 306]
  assert list(p["visit"]) == [0, 0, 1, 2]  # one visit per distinct event day
  assert list(p["pos"]) == [0, 0, 0, 0]
  assert ds.birth_day[0] == (datetime.date(1950, 6, 1) - datetime.date(1970, 1, 1)).days
  # A sex code counts whatever its time; subject 9 is male with zero events.
  assert ds.lengths[1] == 0
  ds_none, _ = meds.read_meds(d, bare_code_system=None)
  assert "OTHER/E119" in ds_none.codes[ds_none.code]
  with pytest.raises(DataError, match="subject 3"):
    meds.read_meds(d, missing_birth="error")


def test_long_sex_spelling_and_unknown_sex_value(tmp_path):
  _write_shard(tmp_path / "m" / "data" / "0.parquet",
               [(9, _day_us(1990, 1, 1), "MEDS_BIRTH"), (9, None, "GENDER//MALE"),
                (9, _day_us(2000, 1, 1), "ICD10CM/I10"), (8, _day_us(1990, 1, 1), "MEDS_BIRTH"),
                (8, None, "GENDER//U")])
  ds, _ = meds.read_meds(tmp_path / "m")
  assert list(ds.sex) == [-1, 1] and list(ds.codes[ds.code]) == ["ICD10CM/I10"]


def test_splits_file_maps_names_and_requires_every_subject(tmp_path):
  d = tmp_path / "m"
  _write_shard(d / "data" / "0.parquet",
               [(s, _day_us(1980, 1, 1), "MEDS_BIRTH") for s in (1, 2, 3)])
  (d / "metadata").mkdir()
  splits = d / "metadata" / "subject_splits.parquet"
  pq.write_table(pa.table({"subject_id": pa.array([3, 1, 2, 99], pa.int64()),
                           "split": ["held_out", "train", "tuning", "train"]}), splits)
  ds, has_splits = meds.read_meds(d)
  assert has_splits and list(ds.split) == [0, 1, 2]
  pq.write_table(pa.table({"subject_id": pa.array([1, 2], pa.int64()),
                           "split": ["train", "tuning"]}), splits)
  with pytest.raises(DataError, match=r"subject_splits.parquet.*subject 3"):
    meds.read_meds(d)
  pq.write_table(pa.table({"subject_id": pa.array([1, 2, 3], pa.int64()),
                           "split": ["train", "dev", "train"]}), splits)
  with pytest.raises(DataError, match=r"'split' has unknown values \['dev'\]"):
    meds.read_meds(d)


def test_load_dataset_keeps_meds_splits(tmp_path, tiny_dataset):
  out = meds.write_meds(tiny_dataset, tmp_path / "m")
  assert load_dataset(_data_cfg(out)).equals(tiny_dataset)
  # Without a splits file, splits come from the subject hash.
  out2 = meds.write_meds(tiny_dataset, tmp_path / "m2", splits=False)
  assert not (out2 / "metadata" / "subject_splits.parquet").exists()
  _, has_splits = meds.read_meds(out2)
  assert not has_splits


def test_existing_directory_is_refused_unless_overwrite(tmp_path, tiny_dataset):
  out = meds.write_meds(tiny_dataset, tmp_path / "m")
  with pytest.raises(DataError, match="already exists"):
    meds.write_meds(tiny_dataset.select([0]), out)
  assert meds.read_meds(out)[0].equals(tiny_dataset)
  meds.write_meds(tiny_dataset.select([0]), out, overwrite=True)
  assert meds.read_meds(out)[0].equals(tiny_dataset.select([0]))
  assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directories left


def test_written_datasets_declare_their_meds_version_and_extension_columns(tmp_path, tiny_dataset):
  import meds as meds_package
  out = meds.write_meds(tiny_dataset, tmp_path / "out")
  meta = json.loads((out / "metadata" / "dataset.json").read_text())
  assert meta["meds_version"] == meds_package.__version__
  assert meta["other_extension_columns"] == ["visit", "place_of_service"]
  meds_package.DatasetMetadataSchema.validate(meta)
  for shard in (out / "data").glob("*.parquet"):
    meds_package.DataSchema.validate(pq.read_table(shard))


def test_cohort_labels_by_hand(tiny_dataset):
  t = meds.cohort_labels(tiny_dataset, ["ICD10CM/D573"])
  assert t.column("boolean_value").to_pylist() == [False, True, False]
  day_us = 86_400 * 10**6
  ends = t.column("prediction_time").cast(pa.int64()).to_pylist()
  # the end of each record's last day; a record without events ends on its birth day
  assert ends == [10401 * day_us - 1, 12101 * day_us - 1, 7306 * day_us - 1]


def _foreign_export(d, value_rows=()):
  """A MEDS export with diagnoses, a drug, labs and bookkeeping rows (numeric values where given)."""
  day = _day_us(2020, 1, 1)
  rows = [(1, _day_us(1960, 1, 1), "MEDS_BIRTH", None),
          (1, day, "DIAGNOSIS//ICD//10//E119", None),
          (1, day, "LAB//50912//mg/dL", 1.1),
          (1, day + _US_PER_DAY, "LAB//50971//mEq/L", 4.0),     # a lab-only day: no visit left
          (1, day + _US_PER_DAY, "OTHER/SUBJECT_WEIGHT", 80.0),
          (1, day + 2 * _US_PER_DAY, "MEDICATION//START//INSULIN", None),
          (1, day + 2 * _US_PER_DAY, "MEDICATION//STOP//INSULIN", None),
          (1, day + 3 * _US_PER_DAY, "ICD10CM/I10", None),
          (1, day + 3 * _US_PER_DAY, "DRUG/METFORMIN", 500.0),  # a dose: never binned
          *value_rows]
  sid, time, code, value = zip(*rows)
  _write_shard(d / "data" / "0.parquet", list(zip(sid, time, code)),
               numeric_value=pa.array(value, pa.float32()))


def test_include_keeps_the_papers_families_and_counts_the_rest(tmp_path):
  _foreign_export(tmp_path / "m")
  ds, report = load_with_report(_data_cfg(tmp_path / "m"))
  p = ds.patient(0)
  assert list(p["code"]) == ["ICD10CM/E119", "DRUG/INSULIN", "ICD10CM/I10", "DRUG/METFORMIN"]
  # The weight and the MEDICATION//STOP//... row are "other".
  assert report["dropped_events"] == {"labs": 2, "other": 2}
  assert list(p["visit"]) == [0, 1, 2, 2]  # day 1's lab-only visit leaves no gap
  assert list(ds.codes) == sorted(ds.codes) and len(ds.codes) == 4
  ds_all, report = load_with_report(_data_cfg(
      tmp_path / "m", include=("diagnoses", "procedures", "medications", "labs", "other"),
      value_bins=0))
  assert report["dropped_events"] == {}
  assert "LAB/50912//mg/dL" in ds_all.codes and "LAB/50971//mEq/L" in ds_all.codes
  assert ds_all.num_events == 8 and list(ds_all.patient(0)["visit"]) == [0, 0, 1, 1, 2, 2, 3, 3]
  ds_dx, report = load_with_report(_data_cfg(tmp_path / "m", include=("diagnoses",)))
  assert report["dropped_events"] == {"procedures": 0, "medications": 2, "labs": 2, "other": 2}
  with pytest.raises(ConfigError, match="unknown code family 'lab'"):
    load_with_report(_data_cfg(tmp_path / "m", include=("diagnoses", "lab")))


def test_lab_values_become_quantile_tokens_fitted_on_the_training_split(tmp_path):
  """Eleven training subjects with creatinine 0..10: the 5-bin edges are 2, 4, 6, 8 (numpy's linear
  quantiles); a tuning and a held-out subject's values, above the range and on an edge, are binned
  by the same edges."""
  d = tmp_path / "m"
  birth, day = _day_us(1960, 1, 1), _day_us(2020, 1, 1)
  rows = []
  for s in range(1, 14):
    rows += [(s, birth, "MEDS_BIRTH", None), (s, day, "ICD10CM/I10", None)]
  values = {s: float(s - 1) for s in range(1, 12)} | {12: 100.0, 13: 4.0}
  rows += [(s, day, "LAB//CREAT//mg/dL", v) for s, v in values.items()]
  rows += [(s, day, "LAB//RARE", 1.0) for s in (1, 2, 3)]  # 3 training values: a bare token
  rows += [(1, day, "LAB//CREAT//mg/dL", None)]             # no value: a bare token
  sid, time, code, value = zip(*rows)
  _write_shard(d / "data" / "0.parquet", list(zip(sid, time, code)),
               numeric_value=pa.array(value, pa.float32()))
  (d / "metadata").mkdir()
  pq.write_table(pa.table({"subject_id": pa.array(range(1, 14), pa.int64()),
                           "split": ["train"] * 11 + ["tuning", "held_out"]}),
                 d / "metadata" / "subject_splits.parquet")
  cfg = _data_cfg(d, include=("diagnoses", "labs"), value_bins=5, value_min_count=5)
  ds, report = load_with_report(cfg)
  creat = {int(ds.subject_id[p]): [c for c in ds.patient(p)["code"] if "CREAT" in c]
           for p in range(ds.num_patients)}
  # Edges fitted on all 13 values would be 2.4, 4.8, ...: subject 3 (value 2) would be Q1.
  expect = {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 4, 8: 4, 9: 5, 10: 5, 11: 5, 12: 5, 13: 3}
  for s, k in expect.items():
    assert f"LAB/CREAT//mg/dL//Q{k}of5" in creat[s], (s, creat[s])
  assert "LAB/CREAT//mg/dL" in creat[1]  # the row without a value
  assert "LAB/RARE" in ds.codes and not any(c.startswith("LAB/RARE//Q") for c in ds.codes)
  assert report["value_tokens"] == dict(binned_codes=1, binned_events=13, bare_numeric_events=3)
  # The training split alone sets the edges: moving the held-out value leaves the others' tokens.
  with pytest.raises(ConfigError, match="value_bins must be 0"):
    load_with_report(_data_cfg(d, include=("diagnoses", "labs"), value_bins=1))
  bare, report = load_with_report(_data_cfg(d, include=("diagnoses", "labs"), value_bins=0))
  assert not any("//Q" in c for c in bare.codes)


def test_write_labels_validates_and_leaves_an_identical_file_alone(tmp_path, tiny_dataset):
  import meds as meds_package
  path = meds.write_labels(meds.cohort_labels(tiny_dataset, ["ICD10CM/D573"]), tmp_path / "l" / "scd.parquet")
  meds_package.LabelSchema.validate(pq.read_table(path))
  stamp = path.stat().st_mtime_ns  # an unchanged rerun does not write (read-only storage)
  meds.write_labels(meds.cohort_labels(tiny_dataset, ["ICD10CM/D573"]), path)
  assert path.stat().st_mtime_ns == stamp
  meds.write_labels(meds.cohort_labels(tiny_dataset, ["ICD10CM/I10"]), path)
  assert pq.read_table(path).column("boolean_value").to_pylist() == [True, True, False]
  with pytest.raises(DataError, match="label file"):
    meds.write_labels(pa.table({"subject_id": pa.array([1], pa.int64())}), tmp_path / "bad.parquet")


def _reshard(out, num_shards, by_subject):
  """Rewrites `out`'s rows into `num_shards` shards: whole subjects per shard, hashed (as MEDS
  ETLs write), or each subject's rows spread over the shards in order (a subject split across
  shards: rows of equal time keep their order, since shards are read in name order)."""
  rows = pa.concat_tables([pq.read_table(p) for p in sorted((out / "data").iterdir())])
  sid = rows.column("subject_id").to_numpy()
  _, patient = np.unique(sid, return_inverse=True)
  if by_subject:
    shard = patient * 7919 % num_shards
  else:
    first = np.searchsorted(sid, sid)  # rows are in subject order, as write_meds writes them
    shard = np.minimum((np.arange(len(sid)) - first) // 3, num_shards - 1)
  for p in (out / "data").iterdir():
    p.unlink()
  for k in range(num_shards):
    pq.write_table(rows.filter(pa.array(shard == k)), out / "data" / f"{k}.parquet")


@pytest.mark.parametrize("by_subject", [True, False])
def test_hash_sharded_and_split_subjects_read_in_bounded_chunks(tmp_path, monkeypatch, by_subject):
  ds = random_dataset(200, seed=3)
  out = meds.write_meds(ds, tmp_path / "m", subjects_per_shard=64)
  _reshard(out, 4, by_subject)
  # Merge steps of a few events each, so patients of several groups interleave in every step.
  monkeypatch.setattr(meds, "_MERGE_EVENTS", 50)
  monkeypatch.setattr(meds, "_SCAN_BATCH_ROWS", 100)
  monkeypatch.setattr(meds, "_SLICE_ROWS", 7)  # sorted shards stream in slices of 7 rows
  back, has_splits = meds.read_meds(out)
  assert has_splits and back.equals(ds)
  np.testing.assert_array_equal(back.age, ds.age)
  groups = meds._shard_groups(meds._scan(sorted((out / "data").iterdir())).subjects)
  assert len(groups) == (4 if by_subject else 1)


def test_events_are_memory_mapped_and_the_scratch_files_are_gone(tmp_path):
  out = meds.write_meds(random_dataset(50, seed=5), tmp_path / "m")
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  ds, _, value = meds.read_meds_values(out, scratch_dir=scratch)
  assert isinstance(ds.code.base, np.memmap) and isinstance(value.base, np.memmap)
  assert list(scratch.iterdir()) == []
  ds.code[0] = ds.code[1]  # copy-on-write: the arrays behave as ordinary writable ones
  assert np.isnan(value).all()


def test_chunked_checks_find_the_first_unsorted_event_across_chunk_boundaries(monkeypatch):
  from rltf_jax.data import events
  monkeypatch.setattr(events, "_CHECK_CHUNK", 3)
  ds = random_dataset(40, seed=6)
  ds.validate()  # patient boundaries fall inside and at the edges of chunks: no false alarm
  for p in (5, 17, 33):  # the second event of a patient moved before its first
    s = ds.offsets[p]
    if ds.lengths[p] < 2 or ds.day[s + 1] == ds.day[s]:
      continue
    day = ds.day.copy()
    day[s + 1] = day[s] - 1
    with pytest.raises(DataError, match=rf"events of subject {ds.subject_id[p]} are not sorted"):
      PatientEvents.build(subject_id=ds.subject_id, sex=ds.sex, birth_day=ds.birth_day,
                          offsets=ds.offsets, code=ds.code, day=day, visit=ds.visit, pos=ds.pos,
                          codes=ds.codes, split=ds.split)


def test_a_shard_found_unsorted_midway_is_read_whole(tmp_path, monkeypatch):
  ds = random_dataset(60, seed=8)
  out = meds.write_meds(ds, tmp_path / "m")
  rows = pq.read_table(out / "data" / "0.parquet")
  sid = rows.column("subject_id").to_numpy()
  half = int(np.searchsorted(sid, sid[len(sid) // 2]))  # a subject boundary
  pq.write_table(pa.concat_tables([rows.slice(half), rows.slice(0, half)]), out / "data" / "0.parquet")
  monkeypatch.setattr(meds, "_SLICE_ROWS", 11)  # several slices are written before the drop
  back, _ = meds.read_meds(out)
  assert back.equals(ds)


def test_subset_fingerprint_equals_the_fingerprint_of_the_copy(monkeypatch):
  from rltf_jax.data import events
  monkeypatch.setattr(events, "_PATIENT_CHUNK", 7)  # hashed in many chunks
  ds = random_dataset(150, seed=9)
  rng = np.random.default_rng(0)
  for patients in (rng.permutation(ds.num_patients)[:90], np.arange(ds.num_patients), np.arange(0)):
    assert ds.subset_fingerprint(patients) == ds.select(patients).used_codes_only().fingerprint()
  assert ds.subset_fingerprint([0, 5, 9]) != ds.subset_fingerprint([0, 5, 8])
