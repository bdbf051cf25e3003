"""Membership attacks a reviewer accepts: TPR at low FPR by hand, members and non-members matched by
cohort, and a generator that memorizes nothing reading as 0.5 on a cohort-heavy member set."""

import numpy as np
import pytest

from rltf_jax.evaluation import privacy
from test_preference import COHORT, random_dataset


def test_tpr_at_low_fpr_by_hand():
  members = np.array([0.9, 0.85, 0.8, 0.7, 0.3])
  nonmembers = np.concatenate([[0.85], np.linspace(0.0, 0.5, 199)])  # 200 non-members
  scores = np.concatenate([members, nonmembers])
  labels = np.arange(len(scores)) < len(members)
  # 1% of 200: 2 false positives allowed. Down the ranking: 0.9 (m), 0.85 (m and n tied: 1 FP),
  # 0.8, 0.7 (m), 0.5 (n: 2 FP), 0.497.. (n: 3 FP, over). So 4 members of 5 are called.
  t = privacy.tpr_at_fpr(scores, labels, 0.01, 0, 0)
  assert (t["value"], t["true_positives"], t["false_positives"], t["allowed_false_positives"]) == (0.8, 4, 2, 2)
  # 0.1% of 200: no false positive allowed; the tie at 0.85 holds one, so only 0.9 is called.
  t = privacy.tpr_at_fpr(scores, labels, 0.001, 200, 0)
  assert (t["value"], t["true_positives"], t["false_positives"], t["allowed_false_positives"]) == (0.2, 1, 0, 0)
  assert t["nonmembers"] == 200 and t["members"] == 5
  assert t["ci95"][0] <= 0.2 <= t["ci95"][1]
  a = privacy.attack_metrics(scores, labels, 50, 0)
  assert set(a["tpr_at_fpr"]) == {"0.001", "0.01"} and a["members"] == 5


def test_a_perfect_and_a_blind_attack_at_low_fpr():
  rng = np.random.default_rng(0)
  labels = np.arange(2000) < 1000
  perfect = privacy.tpr_at_fpr(np.where(labels, 2.0, 0.0) + rng.random(2000), labels, 0.01, 0, 0)
  blind = privacy.tpr_at_fpr(rng.random(2000), labels, 0.01, 100, 0)
  assert perfect["value"] == 1.0
  assert blind["value"] < 0.04 and blind["ci95"][0] <= 0.01 <= blind["ci95"][1]


def test_matched_draw_gives_both_sides_the_same_cohort_counts():
  member = np.array([True] * 60 + [False] * 40)
  nonmember = np.array([True] * 5 + [False] * 500)
  mi, ni, counts = privacy.matched_draw(member, nonmember, 0, 0)
  assert member[mi].sum() == nonmember[ni].sum() == 5
  assert (~member[mi]).sum() == (~nonmember[ni]).sum() == 40
  assert counts["True"] == dict(pool_members=60, pool_nonmembers=5, drawn_per_side=5)
  mi, ni, _ = privacy.matched_draw(member, nonmember, 9, 0)  # capped: strata shrink in proportion
  assert len(mi) == len(ni) <= 9 and member[mi].sum() == nonmember[ni].sum()
  assert len(np.unique(mi)) == len(mi) and len(np.unique(ni)) == len(ni)


class DiagnosisOnly:
  """A generator that memorizes nothing: a record's log-likelihood per token depends on whether it
  holds a cohort code (rare-disease records are less likely), and on nothing about who trained it."""
  name = "diagnosis-only"

  def scored_log_likelihood(self, ds):
    cohort = ds.patients_with_any(COHORT.codes)
    noise = np.random.default_rng(ds.subject_id).normal(0, 0.5, ds.num_patients)
    n = np.maximum(ds.lengths, 1)
    return (-3.0 - 2.0 * cohort + noise) * n, n


@pytest.fixture(scope="module")
def pools():
  ds = random_dataset(num_patients=4000, seed=5, target_rate=0.1)
  cohort = ds.patients_with_any(COHORT.codes) & (ds.lengths > 0)
  other = ~ds.patients_with_any(COHORT.codes) & (ds.lengths > 0)
  c, o = np.flatnonzero(cohort), np.flatnonzero(other)
  members = ds.select(np.sort(np.concatenate([c[:150], o[:150]])))  # 50% cohort, like RLTF's pairs
  nonmembers = ds.select(np.sort(np.concatenate([c[150:], o[150:]])))  # ~6% cohort
  return members, nonmembers


def test_a_generator_that_memorizes_nothing_reads_0_5_on_matched_members(pools):
  members, nonmembers = pools
  assert members.patients_with_any(COHORT.codes).mean() == 0.5
  assert nonmembers.patients_with_any(COHORT.codes).mean() < 0.1
  gen = DiagnosisOnly()
  # Unmatched, the attack measures the diagnosis: members look "less likely", far from 0.5.
  pick = np.sort(np.random.default_rng(0).choice(nonmembers.num_patients, 300, replace=False))
  naive = privacy.membership_inference(gen, members, nonmembers.select(pick), 200, 0)
  assert naive["value"] < 0.35 and naive["ci95"][1] < 0.5
  matched = privacy.matched_membership_inference(gen, members, nonmembers, COHORT.codes, 1000, 200, 0)
  assert matched["ci95"][0] <= 0.5 <= matched["ci95"][1] and abs(matched["value"] - 0.5) < 0.08
  assert matched["matching"]["matched_cohort_share"] == pytest.approx(0.5, abs=0.01)
  assert matched["members"] == matched["nonmembers"] == 300
  t = matched["tpr_at_fpr"]["0.01"]
  assert t["value"] < 0.06 and t["allowed_false_positives"] == 3
  for stratum in ("cohort", "non_cohort"):
    s = matched["strata"][stratum]
    assert s["ci95"][0] <= 0.5 <= s["ci95"][1]


def test_train_and_test_means_matched_by_cohort_share():
  rng = np.random.default_rng(1)
  train_member = np.arange(400) < 200          # 50% cohort
  test_member = np.arange(2000) < 40           # 2% cohort
  score = lambda member: np.where(member, 0.10, 0.30) + rng.normal(0, 0.05, len(member))
  train, test = score(train_member), score(test_member)
  assert train.mean() - test.mean() < -0.08  # unmatched: a spurious "test above train"
  out = privacy.matched_means(train, train_member, test, test_member, 200, 0)
  d = out["matched"]["difference"]
  assert d["ci95"][0] <= 0 <= d["ci95"][1] and abs(d["value"]) < 0.02
  assert out["members"]["train_patients"] == 200 and out["members"]["test_patients"] == 40
  assert out["matched"]["train_member_share"] == 0.5
