"""Preference pairs: property tests over many random pairs, saving and rebuilding."""

import logging

import ml_collections
import numpy as np
import pytest

from rltf_jax.data.cohorts import Cohort
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError, DataError
from rltf_jax.training.preference import PreferenceData, build_preference_data

COHORT = Cohort("toy", "Toy", "toy disease", ("ICD10CM/D570", "ICD10CM/D573"), 1.0, True)
OTHER_CODES = [f"ICD10CM/X{i:02d}" for i in range(20)]


def random_dataset(num_patients=400, seed=0, target_rate=0.3, max_events=30, splits=True):
  """Patients with visits of 1-4 events; a `target_rate` share gets target codes somewhere."""
  rng = np.random.default_rng(seed)
  codes = list(COHORT.codes) + OTHER_CODES
  lens, code, day, visit, pos = [], [], [], [], []
  for _ in range(num_patients):
    n = int(rng.integers(0, max_events + 1))
    visits = np.sort(rng.integers(0, max(1, n // 2 + 1), n))
    visits = np.unique(visits, return_inverse=True)[1] if n else visits
    c = rng.integers(2, len(codes), n)
    if n and rng.random() < target_rate:
      hits = rng.choice(n, size=int(rng.integers(1, min(n, 3) + 1)), replace=False)
      c[hits] = rng.choice(2, len(hits), p=[0.7, 0.3])
    lens.append(n)
    code.append(c)
    visit.append(visits)
    day.append(10_000 + 30 * visits)
    pos.append(rng.choice([11, 21, 23], n))
  split = rng.choice(3, num_patients, p=[0.8, 0.1, 0.1]) if splits else np.zeros(num_patients)
  return PatientEvents.build(
      subject_id=np.arange(num_patients) + 100, sex=rng.integers(0, 2, num_patients),
      birth_day=rng.integers(-20_000, 0, num_patients), offsets=np.concatenate([[0], np.cumsum(lens)]),
      code=np.concatenate(code), day=np.concatenate(day), visit=np.concatenate(visit),
      pos=np.concatenate(pos), codes=codes, split=split)


def rltf_cfg(**kw):
  cfg = ml_collections.ConfigDict(dict(
      num_pairs=120, positive_fraction=0.5, keep_proportion=True, split_seed=0, insert_seed=1,
      max_prompt_events=64, max_continuation_events=64))
  cfg.update(kw)
  return cfg


def rows(ev: PatientEvents, i: int):
  s = slice(ev.offsets[i], ev.offsets[i + 1])
  return list(zip(ev.codes[ev.code[s]], ev.day[s], ev.visit[s], ev.pos[s]))


def check_pairs(data: PreferenceData, source: PatientEvents):
  targets = set(COHORT.codes)
  src_index = {s: i for i, s in enumerate(source.subject_id)}
  pair_subject = data.subject_id
  window = data.params["max_continuation_events"]
  for i in range(data.num_pairs):
    prompt, chosen, rejected = rows(data.prompt, i), rows(data.chosen, i), rows(data.rejected, i)
    assert data.prompt.subject_id[i] == data.chosen.subject_id[i] == data.rejected.subject_id[i]
    record = rows(source, src_index[pair_subject[i]])
    assert source.split[src_index[pair_subject[i]]] == 0, "pairs come from training patients"
    j = data.split_point[i]
    # The prompt is the record's events before j (its most recent ones), the chosen continuation the
    # events from j on (its first ones), and `ends` says whether it reaches the record's end.
    assert prompt == record[max(0, j - data.params["max_prompt_events"]):j]
    assert chosen == record[j:j + window]
    assert data.ends[i] == (j + len(chosen) == len(record))
    if data.params.get("positive_split", "first") == "first" or not data.positive[i]:
      assert not any(e[0] in targets for e in prompt), "a prompt holds the target"
    e = data.edit_index[i]
    assert chosen[:e] == rejected[:e]
    if data.positive[i]:
      assert any(r[0] in targets for r in record)
      assert chosen[e][0] in targets and not any(c[0] in targets for c in chosen[:e])
      assert rejected == [c for c in chosen if c[0] not in targets]
    else:
      assert not any(r[0] in targets for r in record)
      assert len(rejected) == len(chosen) + 1
      inserted = rejected[e]
      assert inserted[0] in targets
      assert rejected[:e] + rejected[e + 1:] == chosen
      if not data.ends[i]:
        assert e < len(chosen), "a cut continuation gets its insertion before a kept event"
      # Attributes (day, visit, place of service) of the record's event before the insertion point,
      # or after it when there is none.
      at = j + e
      neighbour = record[at - 1] if at > 0 else record[0]
      assert inserted[1:] == neighbour[1:]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_properties_over_random_data(seed):
  ds = random_dataset(seed=seed)
  data = build_preference_data(ds, COHORT, rltf_cfg(split_seed=seed, insert_seed=seed + 7))
  assert data.num_pairs == 120
  assert data.positive.sum() == 60
  assert len(np.unique(data.chosen.subject_id)) == data.num_pairs  # drawn without replacement
  check_pairs(data, ds)
  # Both kinds of edge occur in 120 random pairs.
  assert (data.split_point[~data.positive] == 0).any() or (data.prompt.lengths == 0).any()


def test_repeat_pairs_and_several_pairs_per_patient():
  """positive_split="any" draws split points before any target occurrence (so some prompts hold
  the target: repeat pairs) and pairs_per_patient lifts the one-pair-per-member cap; every other
  property of a pair holds as under the paper's rule."""
  ds = random_dataset(seed=4, target_rate=0.1, max_events=40)
  member = ds.subset("train").patients_with_any(COHORT.codes)
  n_members = int(member.sum())
  paper = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=4 * n_members, positive_fraction=0.5))
  assert paper.positive.sum() == n_members  # capped at one pair per member
  data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=4 * n_members, positive_fraction=0.5,
                                                    positive_split="any", pairs_per_patient=3))
  assert data.positive.sum() == 2 * n_members > n_members
  check_pairs(data, ds)
  pos = data.positive
  prompt_has = data.prompt.patients_with_any(COHORT.codes)
  assert prompt_has[pos].any() and not prompt_has[~pos].any()
  assert np.unique(data.subject_id[pos], return_counts=True)[1].max() >= 2
  # The paper's rule leaves the pairs' identity as it was (no lever keys in the params).
  assert "positive_split" not in paper.params and data.params["positive_split"] == "any"
  with pytest.raises(ConfigError, match="positive_split"):
    build_preference_data(ds, COHORT, rltf_cfg(positive_split="last"))


def test_windows_keep_the_edit_region():
  ds = random_dataset(seed=3, max_events=40)
  data = build_preference_data(ds, COHORT, rltf_cfg(max_prompt_events=4, max_continuation_events=5))
  check_pairs(data, ds)
  assert data.prompt.lengths.max() <= 4 and data.chosen.lengths.max() <= 5
  assert data.rejected.lengths.max() <= 6
  assert (~data.ends).any()


@pytest.mark.parametrize("p", [0.0, 0.25, 1.0])
def test_positive_proportion(p):
  ds = random_dataset(seed=4)
  data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=80, positive_fraction=p))
  assert data.num_pairs == 80 and data.positive.sum() == round(80 * p)
  check_pairs(data, ds)


def test_too_few_positives_warns_and_keeps_proportion(caplog):
  ds = random_dataset(num_patients=300, seed=5, target_rate=0.05)
  train = (ds.split == 0) & (ds.lengths > 0)
  n_pos = int(ds.patients_with_any(COHORT.codes)[train].sum())
  with caplog.at_level(logging.WARNING, logger="rltf_jax"):
    data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=200))
  assert "positive" in caplog.text and "toy" in caplog.text
  assert data.positive.sum() == n_pos and (~data.positive).sum() == n_pos
  with caplog.at_level(logging.WARNING, logger="rltf_jax"):
    data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=200, keep_proportion=False))
  assert data.positive.sum() == n_pos and data.num_pairs == 200


def test_no_positive_is_a_data_error():
  ds = random_dataset(seed=6, target_rate=0.0)
  with pytest.raises(DataError, match="toy"):
    build_preference_data(ds, COHORT, rltf_cfg())


def test_bad_config_is_a_config_error():
  with pytest.raises(ConfigError, match="positive_fraction"):
    build_preference_data(random_dataset(seed=0), COHORT, rltf_cfg(positive_fraction=1.5))


def test_inserted_code_follows_training_frequency():
  ds = random_dataset(num_patients=2000, seed=7, max_events=10)
  data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=1200, positive_fraction=0.0))
  train = ds.select(ds.split == 0)
  counts = train.code_counts()[:2]  # codes 0 and 1 are the cohort's
  inserted = [rows(data.rejected, i)[data.edit_index[i]][0] for i in range(data.num_pairs)]
  share = np.mean([c == COHORT.codes[0] for c in inserted])
  assert abs(share - counts[0] / counts.sum()) < 0.05


def test_saved_pairs_rebuild_identically(tmp_path):
  ds = random_dataset(seed=8)
  cfg = rltf_cfg()
  data = build_preference_data(ds, COHORT, cfg, tmp_path / "pref")
  assert (tmp_path / "pref" / "pairs.npz").exists() and (tmp_path / "pref" / "params.json").exists()
  again = build_preference_data(ds, COHORT, cfg)  # rebuilt from scratch, not loaded
  assert again.fingerprint == data.fingerprint
  loaded = PreferenceData.load(tmp_path / "pref")
  assert loaded.fingerprint == data.fingerprint and loaded.chosen.equals(data.chosen)
  assert loaded.params["num_positive"] == 60 and loaded.params["split_seed"] == 0
  # Same request: loaded, not rebuilt. Another seed: refused rather than overwritten.
  assert build_preference_data(ds, COHORT, cfg, tmp_path / "pref").fingerprint == data.fingerprint
  other = build_preference_data(ds, COHORT, rltf_cfg(insert_seed=2))
  assert other.fingerprint != data.fingerprint
  with pytest.raises(ConfigError, match="other parameters"):
    build_preference_data(ds, COHORT, rltf_cfg(insert_seed=2), tmp_path / "pref")
