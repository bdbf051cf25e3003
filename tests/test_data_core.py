"""The columnar dataset, code normalisation, vocabulary and cohorts."""

import numpy as np
import pytest

from rltf_jax.data import codes as codes_lib
from rltf_jax.data.cohorts import COHORTS, get_cohort
from rltf_jax.data.events import PatientEvents, assign_splits, concat, gather_ranges
from rltf_jax.data.vocab import BOS, UNK, Vocabulary
from rltf_jax.errors import ConfigError, DataError


def test_normalize_code_spellings_agree():
  same = ["ICD10CM/E119", "ICD10CM/E11.9", "DIAGNOSIS//ICD//10//E119", "E119", "e11.9", "icd10/E119"]
  assert {codes_lib.normalize_code(s) for s in same} == {"ICD10CM/E119"}
  assert codes_lib.normalize_code("DIAGNOSIS//ICD//9//4019") == "ICD9CM/4019"
  assert codes_lib.normalize_code("4019") == "OTHER/4019"
  assert codes_lib.normalize_code("E119", bare_system=None) == "OTHER/E119"
  assert codes_lib.code_type("ICD9CM/4019") == codes_lib.CodeType.DIAGNOSIS_ICD9
  assert codes_lib.code_type("ICD10CM/E119") == codes_lib.CodeType.DIAGNOSIS
  assert codes_lib.code_type("ATC/A10BA02") == codes_lib.CodeType.MEDICATION
  assert codes_lib.normalize_code("LAB//50912//mg/dL") == "LAB/50912//mg/dL"
  assert codes_lib.code_type("LAB/50912//mg/dL") == codes_lib.CodeType.LAB
  assert codes_lib.normalize_code("MEDICATION//START//Aspirin") == "DRUG/Aspirin"
  assert codes_lib.normalize_code("MEDICATION//Heparin//Administered//633") == "DRUG/Heparin//Administered//633"
  assert codes_lib.normalize_code("MEDICATION//STOP//Aspirin") == "OTHER/MEDICATION//STOP//Aspirin"


def test_code_families_by_prefix():
  codes = ["ICD10CM/E119", "ICD9CM/4019", "CCSPX/47", "ICD9PCS/3893", "DRUG/X", "ATC/A10BA02",
           "LAB/1//mg", "LOINC/2160-0", "OTHER/WEIGHT", "GENDER/F"]
  names = [list(codes_lib.FAMILIES)[i] for i in codes_lib.code_families(codes)]
  assert names == ["diagnoses", "diagnoses", "procedures", "procedures", "medications",
                   "medications", "labs", "labs", "other", "other"]
  assert "CCSPX/" in codes_lib.family_prefixes("procedures")


def test_select_and_first_position(tiny_dataset):
  ds = tiny_dataset
  assert list(ds.lengths) == [3, 4, 0]
  assert list(ds.patients_with_any(["ICD10CM/D573"])) == [False, True, False]
  assert list(ds.first_position_of_any(["ICD10CM/D573"])) == [-1, 1, -1]
  sub = ds.select([1, 0])
  assert list(sub.subject_id) == [11, 10]
  assert list(sub.codes[sub.code]) == ["ICD10CM/I10", "ICD10CM/D573", "CCSPX/47", "ICD10CM/D573",
                                       "ICD10CM/E119", "ICD10CM/I10", "ATC/A10BA02"]
  assert ds.select(np.array([False, True, False])).equals(ds.select([1]))
  np.testing.assert_allclose(ds.age[:1], [10000 / 365.25], rtol=1e-6)
  assert ds.subset("test").num_patients == 1


def test_gather_ranges():
  assert list(gather_ranges(np.array([5, 0, 9]), np.array([2, 0, 3]))) == [5, 6, 9, 10, 11]


def test_unsorted_times_are_rejected(tiny_dataset):
  with pytest.raises(DataError, match="subject 10 are not sorted by time"):
    PatientEvents.build(subject_id=[10], sex=[0], birth_day=[0], offsets=[0, 2], code=[0, 1],
                        day=[5, 4], visit=[0, 1], pos=[11, 11], codes=["ICD10CM/A", "ICD10CM/B"],
                        source="x.parquet")


def test_splits_are_a_function_of_the_subject():
  ids = np.arange(20_000)
  s = assign_splits(ids, (0.8, 0.1, 0.1), seed=3)
  frac = np.bincount(s, minlength=3) / len(ids)
  np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.01)
  perm = np.random.default_rng(0).permutation(len(ids))
  assert np.array_equal(assign_splits(ids[perm], (0.8, 0.1, 0.1), seed=3), s[perm])
  assert not np.array_equal(assign_splits(ids, (0.8, 0.1, 0.1), seed=4), s)
  with pytest.raises(DataError, match="sum"):
    assign_splits(ids, (0.5, 0.1, 0.1))


def test_save_load_and_concat(tmp_path, tiny_dataset):
  path = tiny_dataset.save(tmp_path / "ds.npz")
  assert PatientEvents.load(path).equals(tiny_dataset)
  a, b = tiny_dataset.select([0]), tiny_dataset.select([1, 2])
  assert concat([a, b]).equals(tiny_dataset)


def test_the_mapped_dataset_is_the_saved_one_read_lazily_and_never_written_back(tmp_path, tiny_dataset):
  """`save_mapped` / `open_mapped`: the same fields and fingerprint as the dataset saved, every
  event column a memory map (nothing read whole), and an in-place write stays in this process."""
  path = tiny_dataset.save_mapped(tmp_path / "dataset")
  back = PatientEvents.open_mapped(path)
  assert back.fingerprint() == tiny_dataset.fingerprint()
  for f in ("subject_id", "offsets", "code", "day", "visit", "pos", "age", "codes"):
    np.testing.assert_array_equal(getattr(back, f), getattr(tiny_dataset, f))
  for f in ("code", "day", "visit", "pos", "age"):
    assert isinstance(getattr(back, f).base, np.memmap) or isinstance(getattr(back, f), np.memmap), f
  on_disk = (path / "code.npy").read_bytes()
  back.code[0] = back.code[0] + 1  # copy-on-write: the file keeps its bytes
  assert (path / "code.npy").read_bytes() == on_disk
  assert PatientEvents.open_mapped(path).fingerprint() == tiny_dataset.fingerprint()
  with pytest.raises(DataError, match="cannot read a saved dataset"):
    PatientEvents.open_mapped(tmp_path / "missing")


def test_vocabulary_uses_training_patients_and_keeps_targets(tmp_path, tiny_dataset):
  vocab = Vocabulary.build(tiny_dataset, min_count=2, always_include=["ICD10CM/D573", "ICD10CM/Z999"])
  # I10 occurs twice in training, D573 twice; E119, 47, A10BA02 once -> pruned to <unk>.
  assert vocab.codes[:2] == ("ICD10CM/D573", "ICD10CM/I10")
  assert "ICD10CM/Z999" in vocab and "ICD10CM/E119" not in vocab
  tokens = vocab.encode(tiny_dataset)
  assert tokens[0] == UNK and tokens[1] == vocab.id("ICD10CM/I10")
  path = vocab.save(tmp_path / "vocab.json")
  assert Vocabulary.load(path) == vocab
  path.write_text(path.read_text().replace("ICD10CM/I10", "ICD10CM/I11"))
  with pytest.raises(DataError, match="fingerprint"):
    Vocabulary.load(path)
  assert BOS == 1


def test_cohorts_table():
  assert len(COHORTS) == 16
  assert get_cohort("SCD").codes == ("ICD10CM/D573",)
  assert get_cohort("GI Hem.").name == "gi_hem"
  assert "ICD10CM/I2109" in get_cohort("ami").codes
  with pytest.raises(ConfigError, match="unknown cohort 'xyz'"):
    get_cohort("xyz")


def test_cohorts_match_shared_table():
  from conftest import shared_path
  import csv
  with open(shared_path("data", "cohorts_table4.csv")) as f:
    rows = list(csv.DictReader(f))
  by_abbrev = {c.abbrev: c for c in COHORTS.values()}
  for row in rows:
    c = by_abbrev[row["abbrev"]]
    assert c.codes == tuple("ICD10CM/" + x for x in row["icd10_codes"].split())
    assert c.paper_frequency_percent == float(row["paper_frequency_percent"])


def test_table4_file_holds_exactly_the_cohorts_the_python_literals_held():
  """rltf_jax/data/table4_cohorts.json replaced the Python table: every field (names, abbreviations,
  diseases, codes in order, paper prevalences, rare flags) and every acute flag is as before; the
  digest was taken from the literals before they were removed. The evaluation keys runs by
  `runs.digest(cohorts.cohort_key(cohort))` (the dataclass's fields before `chronic` joined them),
  so finished runs stay valid."""
  import dataclasses
  import hashlib
  import json
  from rltf_jax import runs
  from rltf_jax.data import cohorts
  record = [dict(cohorts.cohort_key(c), acute=c.acute) for c in COHORTS.values()]
  assert hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest() == (
      "ef89a6d1664c1d31dc2d98e61a09cd53cf3d0264b222012b2a369277807bbeef")
  assert runs.digest([cohorts.cohort_key(c) for c in COHORTS.values()]) == "67f1cdcdb9f0516d"
  assert list(COHORTS) == ["sep", "surg", "scd", "dm", "lipid", "fluid", "ami", "cond", "dys", "cvd",
                           "pneu", "pleu", "resp", "gi_hem", "renal", "shock"]
  assert set(cohorts.CHRONIC_COHORTS) == {"scd", "dm", "lipid", "dys", "cond"}
  assert [c.name for c in COHORTS.values() if c.rare_in_paper] == ["sep", "surg", "scd", "ami", "cvd",
                                                                   "pleu", "shock"]


def test_vocabulary_max_size_keeps_targets(tiny_dataset):
  vocab = Vocabulary.build(tiny_dataset, max_size=7, always_include=["ICD10CM/Z999"])
  assert len(vocab) == 7
  # Two slots left after the specials and the target: the two most frequent training codes.
  assert vocab.codes == ("ICD10CM/D573", "ICD10CM/I10", "ICD10CM/Z999")
