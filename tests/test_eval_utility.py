"""Utility evaluation: count matrices, the 70/30 split, CatBoost on real/synthetic/augmentation."""

import numpy as np
import pytest
import scipy.sparse as sp

from rltf_jax.data.cohorts import get_cohort
from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import utility

CODES = ["ICD10CM/D573", "ATC/B03BB01", "ICD10CM/E119", "ICD10CM/I10", "CCSPX/47", "ATC/A10BA02",
         "ICD10CM/Z00", "ICD10CM/J069"]
TARGET, MARKER = 0, 1  # D573 (SCD) and a code that travels with it (folic acid)


def toy_dataset(n: int = 120, seed: int = 0, test_fraction: float = 0.5) -> PatientEvents:
  """`n` patients with 8-16 events over `CODES`; about a third are SCD-positive, and positives
  carry MARKER, so counts of non-target codes predict the cohort. Splits: train / test."""
  rng = np.random.default_rng(seed)
  lens = rng.integers(8, 17, n)
  positive = rng.random(n) < 0.35
  code, visit, day = [], [], []
  for p in range(n):
    c = rng.integers(2, len(CODES), lens[p])
    if positive[p]:
      c[rng.choice(lens[p], 2, replace=False)] = [TARGET, MARKER]
    code.append(c)
    v = np.sort(rng.integers(0, 4, lens[p]))
    visit.append(v)
    day.append(15000 + 30 * v)
  offsets = np.concatenate([[0], np.cumsum(lens)])
  split = np.where(rng.random(n) < test_fraction, 2, 0)
  return PatientEvents.build(
      subject_id=np.arange(n) + 1000, sex=rng.integers(0, 2, n), birth_day=np.full(n, 3000),
      offsets=offsets, code=np.concatenate(code), day=np.concatenate(day),
      visit=np.concatenate(visit), pos=np.full(offsets[-1], 11), codes=CODES, split=split)


def test_count_matrix_excludes_target_codes(tiny_dataset):
  cohort = get_cohort("scd")
  features = utility.feature_codes(tiny_dataset.codes, cohort.codes)
  assert "ICD10CM/D573" not in features and len(features) == 4
  X = utility.count_matrix(tiny_dataset, features)
  assert type(X) is sp.csr_matrix  # CatBoost rejects csr_array
  col = {c: i for i, c in enumerate(features)}
  dense = X.toarray()
  # patient 0: E119 I10 A10BA02; patient 1: I10 D573 47 D573 (D573 dropped); patient 2: none
  expect = np.zeros((3, 4))
  for p, cs in ((0, ["ICD10CM/E119", "ICD10CM/I10", "ATC/A10BA02"]), (1, ["ICD10CM/I10", "CCSPX/47"])):
    for c in cs:
      expect[p, col[c]] += 1
  np.testing.assert_array_equal(dense, expect)


def test_count_matrix_counts_repeats_and_ignores_unknown_codes():
  ds = toy_dataset(30, seed=3)
  features = np.array(sorted(["ICD10CM/I10", "ICD10CM/E119"]))
  X = utility.count_matrix(ds, features).toarray()
  seqs = [ds.codes[ds.code[a:b]] for a, b in zip(ds.offsets[:-1], ds.offsets[1:])]
  for p, s in enumerate(seqs):
    assert X[p, 0] == np.sum(s == "ICD10CM/E119") and X[p, 1] == np.sum(s == "ICD10CM/I10")


def test_split_is_disjoint_stratified_and_seeded():
  labels = np.zeros(200, bool)
  labels[:20] = True
  model, valid, stratified = utility.model_validation_split(labels, 0.7, seed=5)
  assert stratified and len(model) == 140 and len(valid) == 60
  assert not set(model) & set(valid) and set(model) | set(valid) == set(range(200))
  assert labels[model].sum() == 14 and labels[valid].sum() == 6  # the 10% rate kept in both halves
  again, _, _ = utility.model_validation_split(labels, 0.7, seed=5)
  other, _, _ = utility.model_validation_split(labels, 0.7, seed=6)
  assert np.array_equal(model, again) and not np.array_equal(model, other)


def test_split_with_a_single_positive_falls_back_to_plain_split():
  labels = np.zeros(50, bool)
  labels[3] = True
  model, valid, stratified = utility.model_validation_split(labels, 0.7, seed=0)
  assert not stratified and len(model) + len(valid) == 50 and not set(model) & set(valid)


def _data(ds, synthetic_labels=None):
  cohort = get_cohort("scd")
  real_labels = ds.patients_with_any(cohort.codes)
  syn_labels = real_labels if synthetic_labels is None else synthetic_labels
  data, _ = utility.build_utility_data(ds, ds, real_labels, syn_labels, cohort.codes,
                                       model_fraction=0.7, seed=0, cohort="scd")
  return data


def test_utility_learns_and_constant_scorer_when_synthetic_has_one_class(tmp_path):
  ds = toy_dataset(200)
  data = _data(ds, synthetic_labels=np.zeros(ds.num_patients, bool))
  assert set(data.model_subject_id).isdisjoint(data.valid_subject_id)
  out = utility.evaluate_utility(data, iterations=30, threads=1, seed=0, bootstrap_samples=50)
  # MARKER travels with the target, so the real classifier separates the classes.
  assert out["real"]["auroc"]["value"] > 0.95 and not out["real"]["constant_scorer"]
  assert out["synthetic"]["constant_scorer"] and out["synthetic"]["auroc"]["value"] == 0.5
  prevalence = data.y["real_valid"].mean()
  assert out["synthetic"]["auprc"]["value"] == pytest.approx(prevalence)
  assert out["augmentation"]["train_patients"] == 2 * out["real"]["train_patients"]
  assert out["validation"]["positives"] == int(data.y["real_valid"].sum())


def test_utility_npz_roundtrip_reruns_alone(tmp_path):
  data = _data(toy_dataset(80, seed=1))
  path = utility.save_utility_data(tmp_path / "utility.npz", data)
  back = utility.load_utility_data(path)
  assert back.cohort == "scd" and np.array_equal(back.features, data.features)
  for m in utility.MATRICES:
    assert (back.X[m] != data.X[m]).nnz == 0 and np.array_equal(back.y[m], data.y[m])
  kw = dict(iterations=10, threads=1, seed=0, bootstrap_samples=20)
  assert utility.evaluate_utility(back, **kw) == utility.evaluate_utility(data, **kw)
  assert utility.main([str(path), "--iterations", "5", "--threads", "1", "--bootstrap", "10"]) == 0


def test_label_table_counts_real_against_synthetic_labels():
  real = np.array([1, 1, 1, 0, 0, 0, 0], bool)
  syn = np.array([1, 0, 1, 1, 0, 0, 0], bool)
  table = utility.label_table(real, syn, in_prompt=np.array([1, 0, 0, 0, 0, 0, 0], bool))
  assert table == dict(patients=7, real_positive=dict(synthetic_positive=2, synthetic_negative=1),
                       real_negative=dict(synthetic_positive=1, synthetic_negative=3),
                       target_in_prompt=1)


def test_prompt_only_control_trains_on_the_prompts_alone(tmp_path):
  from rltf_jax.evaluation import conditional
  cohort = get_cohort("scd")
  ds = toy_dataset(200, seed=2)
  prompts, _ = conditional.truncate(ds, 4)
  labels = ds.patients_with_any(cohort.codes)
  data, _ = utility.build_utility_data(ds, ds, labels, labels, cohort.codes, model_fraction=0.7,
                                       seed=0, cohort="scd", prompts=prompts,
                                       prompt_labels=prompts.patients_with_any(cohort.codes))
  model = np.isin(ds.subject_id, data.model_subject_id)
  assert (data.X["prompt_model"] != utility.count_matrix(prompts.select(model), data.features)).nnz == 0
  assert np.array_equal(data.y["prompt_model"], prompts.patients_with_any(cohort.codes)[model])
  out = utility.evaluate_utility(data, iterations=20, threads=1, seed=0, bootstrap_samples=20)
  row = out["prompt_only"]
  assert row["train_patients"] == int(model.sum())
  assert row["train_positives"] == int(data.y["prompt_model"].sum()) < out["real"]["train_positives"]
  assert 0.0 <= row["auroc"]["value"] <= 1.0 and not row["constant_scorer"]
  # Synthetic = real here: the 2x2 table is diagonal, and it counts the prompts that hold the target.
  t = out["label_table"]
  assert t["real_positive"]["synthetic_negative"] == t["real_negative"]["synthetic_positive"] == 0
  assert t["real_positive"]["synthetic_positive"] == out["real"]["train_positives"]
  assert t["target_in_prompt"] == row["train_positives"]
  # The control is saved with the matrices and reruns alone; older files without it still load.
  path = utility.save_utility_data(tmp_path / "utility.npz", data)
  back = utility.load_utility_data(path)
  assert (back.X["prompt_model"] != data.X["prompt_model"]).nnz == 0
  kw = dict(iterations=20, threads=1, seed=0, bootstrap_samples=20)
  assert utility.evaluate_utility(back, **kw) == out
  plain = utility.save_utility_data(tmp_path / "old.npz", _data(ds))
  assert "prompt_only" not in utility.evaluate_utility(utility.load_utility_data(plain), **kw)


def test_features_come_from_the_real_records_so_every_method_shares_the_real_fits():
  """Two generators' synthetic records (one writing a code no real record holds) give the same
  features and real matrices; the second evaluation reuses the real and prompt-only fits (no
  CatBoost call) and they equal a fresh fit (CatBoost is deterministic for a seed)."""
  from rltf_jax.evaluation import conditional
  cohort = get_cohort("scd")
  ds = toy_dataset(200, seed=4)
  prompts, _ = conditional.truncate(ds, 4)
  labels = ds.patients_with_any(cohort.codes)
  # Synthetic records of "another generator": the same records with a code only it writes.
  extra = PatientEvents.build(
      subject_id=ds.subject_id, sex=ds.sex, birth_day=ds.birth_day, offsets=ds.offsets,
      code=np.where(np.arange(ds.num_events) % 5 == 0, len(CODES), ds.code), day=ds.day,
      visit=ds.visit, pos=ds.pos, codes=CODES + ["ICD10CM/ONLY_SYNTHETIC"], split=ds.split)
  build = lambda syn: utility.build_utility_data(
      ds, syn, labels, syn.patients_with_any(cohort.codes), cohort.codes, model_fraction=0.7,
      seed=0, cohort="scd", prompts=prompts, prompt_labels=prompts.patients_with_any(cohort.codes))[0]
  a, b = build(ds), build(extra)
  assert "ICD10CM/ONLY_SYNTHETIC" not in a.features and np.array_equal(a.features, b.features)
  for m in ("real_model", "real_valid", "prompt_model"):
    assert (a.X[m] != b.X[m]).nnz == 0
  assert (a.X["synthetic_model"] != b.X["synthetic_model"]).nnz > 0
  kw = dict(iterations=15, threads=1, seed=0, bootstrap_samples=20)
  fits = utility.FitCache()
  first = utility.evaluate_utility(a, fits=fits, **kw)
  assert fits.made == 3  # `a`'s synthetic records are the real ones: one fit for both rows
  second = utility.evaluate_utility(b, fits=fits, **kw)
  assert fits.made == 5  # synthetic and augmentation; real and prompt-only reused
  assert second["real"] == first["real"] and second["prompt_only"] == first["prompt_only"]
  fresh = utility.FitCache()  # a fresh fit of the same rows gives the same numbers
  assert utility.evaluate_utility(b, rows=("real",), fits=fresh, **kw)["real"] == first["real"]
  assert fresh.made == 1
  # Without a cache nothing is kept between calls (no process-wide state).
  assert utility.evaluate_utility(b, rows=("real",), **kw)["real"] == first["real"]
  assert fits.made == 5 and fresh.made == 1


def test_record_features_drop_the_targets_and_codes_of_a_single_patient():
  ds = toy_dataset(40, seed=5)
  lone = PatientEvents.build(
      subject_id=ds.subject_id, sex=ds.sex, birth_day=ds.birth_day, offsets=ds.offsets,
      code=np.where(np.arange(ds.num_events) == ds.offsets[3], len(CODES), ds.code), day=ds.day,
      visit=ds.visit, pos=ds.pos, codes=CODES + ["ICD10CM/LONE"], split=ds.split)
  # The lone code twice in one patient is still one patient.
  lone.code[ds.offsets[3] + 1] = len(CODES)
  features = utility.record_features(lone, get_cohort("scd").codes)
  assert "ICD10CM/LONE" not in features and "ICD10CM/D573" not in features
  assert set(features) == set(CODES) - {"ICD10CM/D573"}
  assert "ICD10CM/LONE" in utility.record_features(lone, [], min_patients=1)
