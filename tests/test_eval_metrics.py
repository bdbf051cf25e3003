"""Evaluation metrics against hand-computed values on tiny fixed inputs."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import conditional, metrics, prevalence


# ---------------------------------------------------------------- precision / recall / F1
def test_prf_hand_computed():
  # tp = 2 (0, 4), fp = 1 (1), fn = 1 (2): P = R = F1 = 2/3
  p, r, f = metrics.precision_recall_f1([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])[0]
  assert (p, r, f) == pytest.approx((2 / 3, 2 / 3, 2 / 3))
  # tp = 1, fp = 0, fn = 1: P = 1, R = 1/2, F1 = 2/3
  p, r, f = metrics.precision_recall_f1([1, 0, 0, 0], [1, 1, 0, 0])[0]
  assert (p, r, f) == pytest.approx((1.0, 0.5, 2 / 3))


def test_prf_no_predicted_positive_is_zero_by_convention():
  out = metrics.target_fidelity(np.zeros(5, bool), np.array([1, 0, 1, 0, 0], bool), 50, 0)
  assert out["precision"]["value"] == 0.0 and out["recall"]["value"] == 0.0 and out["f1"]["value"] == 0.0
  assert out["counts"]["precision_by_convention"] and not out["counts"]["recall_by_convention"]
  assert out["counts"]["actual_positive"] == 2 and out["counts"]["predicted_positive"] == 0


def test_prf_no_true_positive_and_no_positive_at_all():
  out = metrics.target_fidelity(np.array([1, 0, 0], bool), np.zeros(3, bool), 50, 0)
  assert (out["precision"]["value"], out["recall"]["value"], out["f1"]["value"]) == (0.0, 0.0, 0.0)
  assert out["counts"]["recall_by_convention"] and not out["counts"]["precision_by_convention"]
  none = metrics.precision_recall_f1(np.zeros(4, bool), np.zeros(4, bool))[0]
  assert list(none) == [0.0, 0.0, 0.0]


def test_prf_weights_equal_repeated_rows():
  pred = np.array([1, 1, 0, 1, 0], bool)
  true = np.array([1, 0, 1, 1, 0], bool)
  w = np.array([[2, 0, 1, 3, 1]])
  repeated = np.repeat(np.arange(5), w[0])
  np.testing.assert_allclose(metrics.precision_recall_f1(pred, true, w),
                             metrics.precision_recall_f1(pred[repeated], true[repeated]))


# ---------------------------------------------------------------- AUROC / AUPRC
def test_auroc_perfect_reversed_constant():
  y = np.array([0, 0, 1, 1, 0, 1], bool)
  s = np.where(y, 0.9, 0.1) + np.arange(6) * 1e-3
  assert metrics.auroc(s, y)[0] == 1.0
  assert metrics.auroc(-s, y)[0] == 0.0
  assert metrics.auroc(np.zeros(6), y)[0] == 0.5
  assert metrics.auprc(s, y)[0] == 1.0
  assert metrics.auprc(np.zeros(6), y)[0] == pytest.approx(0.5)  # constant: AP = prevalence


def test_auroc_auprc_hand_computed():
  # 2 positives (0.35, 0.8), 2 negatives (0.1, 0.4): pairs ranked right 3 of 4 -> AUROC 0.75.
  # Descending: 0.8 (+) P=1 R=.5; 0.4 (-); 0.35 (+) P=2/3 R=1 -> AP = .5*1 + .5*2/3 = 5/6.
  s, y = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)
  assert metrics.auroc(s, y)[0] == pytest.approx(0.75)
  assert metrics.auprc(s, y)[0] == pytest.approx(5 / 6)


def test_auroc_random_scorer_near_half():
  rng = np.random.default_rng(0)
  y = rng.random(20_000) < 0.3
  assert abs(metrics.auroc(rng.random(20_000), y)[0] - 0.5) < 0.02


def test_ranking_one_class_is_nan_and_json_none():
  assert np.isnan(metrics.auroc([0.2, 0.3], [True, True])[0])
  out = metrics.ranking_metrics(np.array([0.2, 0.3, 0.1]), np.zeros(3, bool), 20, 0)
  assert out["auroc"]["value"] is None and out["auroc"]["ci95"] == [None, None]


def test_weighted_ranking_matches_sklearn_with_ties():
  rng = np.random.default_rng(1)
  s = rng.integers(0, 6, 200).astype(float)  # many ties
  y = rng.random(200) < 0.3
  for w in next(metrics.bootstrap_weights(200, 4, 7)):
    assert metrics.auroc(s, y, w)[0] == pytest.approx(roc_auc_score(y, s, sample_weight=w))
    assert metrics.auprc(s, y, w)[0] == pytest.approx(average_precision_score(y, s, sample_weight=w))


def test_bootstrap_interval_brackets_value_and_is_deterministic():
  x = np.random.default_rng(2).random(300)
  a, b = metrics.mean_ci(x, 400, 3), metrics.mean_ci(x, 400, 3)
  assert a == b
  assert a["ci95"][0] < a["value"] < a["ci95"][1]
  assert a["value"] == pytest.approx(x.mean())
  # the interval of a mean of 300 uniforms is about +-1.96 * 0.29 / sqrt(300) = +-0.033
  assert 0.04 < a["ci95"][1] - a["ci95"][0] < 0.09


def test_bootstrap_weights_are_resample_counts():
  blocks = list(metrics.bootstrap_weights(50, 30, 0))
  w = np.concatenate(blocks)
  assert w.shape == (30, 50) and np.all(w.sum(axis=1) == 50) and w.min() >= 0


# ---------------------------------------------------------------- ROUGE-1
def test_rouge1_known_strings():
  # overlap 2 of 4 generated and 3 true: P = 1/2, R = 2/3, F = 4/7
  prf = metrics.rouge1([["A", "B", "C"]], [["A", "B", "D", "E"]])[0]
  np.testing.assert_allclose(prf, [0.5, 2 / 3, 4 / 7])
  # repeated codes clip at the reference count: overlap 1, P = 1, R = 1/3, F = 1/2
  np.testing.assert_allclose(metrics.rouge1([["A", "A", "B"]], [["A"]])[0], [1.0, 1 / 3, 0.5])
  # order does not matter for ROUGE-1; empty generation scores 0
  assert metrics.rouge1([["A", "B"]], [["B", "A"]])[0, 2] == 1.0
  assert metrics.rouge1([["A", "B"]], [[]])[0, 2] == 0.0


def test_rouge1_keeps_codes_whole():
  # rouge-score's default tokenizer would split these into "icd10cm"/"atc" + "e119" and match half.
  assert metrics.rouge1([["ICD10CM/E119"]], [["ATC/E119"]])[0, 2] == 0.0
  assert metrics.rouge1([["ICD10CM/E11.9"]], [["ICD10CM/E119"]])[0, 2] == 0.0
  assert metrics.rouge1([["ICD10CM/E119", "CCSPX/47"]], [["CCSPX/47", "ICD10CM/E119"]])[0, 2] == 1.0


def test_agreement_identity_and_offset():
  real = np.array([0.1, 0.2, 0.3, 0.4])
  assert metrics.agreement(real, real) == dict(pearson_r=pytest.approx(1.0), r2_identity=1.0, num_codes=4)
  shifted = metrics.agreement(real, real + 0.1)
  assert shifted["pearson_r"] == pytest.approx(1.0)
  # R^2 on the identity line: 1 - 4 * 0.01 / 0.05 = 0.2 (an offset is penalised, r is not)
  assert shifted["r2_identity"] == pytest.approx(0.2)


def test_weighted_agreement_equals_repeating_the_items():
  rng = np.random.default_rng(3)
  real, syn = rng.random(12), rng.random(12)
  w = rng.integers(0, 4, (5, 12))
  got = metrics.agreement_rows(real, syn, w)
  for row, weights in zip(got, w):
    want = metrics.agreement_rows(np.repeat(real, weights), np.repeat(syn, weights))[0]
    np.testing.assert_allclose(row, want, rtol=1e-12)
  # hand check of one weighting: items (0.1, 0.2) twice and (0.3, 0.2) once
  r, r2 = metrics.agreement_rows(np.array([0.1, 0.3]), np.array([0.2, 0.2]), np.array([[2, 1]]))[0]
  assert np.isnan(r)  # synthetic constant
  # weighted mean of real 1/6; SS(real) = 2 (1/15)^2 + (2/15)^2 = 6/225; SS(real - syn) = 3 * 0.01
  assert r2 == pytest.approx(1 - 0.03 / (6 / 225))  # = -0.125


def test_prevalence_interval_contains_its_estimate_on_rare_noisy_codes():
  """Real and synthetic records drawn independently from the same per-code rates. Resampling
  patients would add noise to every code's two prevalences and push every resampled r below the
  estimate; resampling codes brackets it."""
  rng = np.random.default_rng(0)
  n, c = 100, 400
  rate = rng.beta(0.5, 30.0, c)
  codes = [f"ICD10CM/Z{i:03d}" for i in range(c)]

  def records():
    has = rng.random((n, c)) < rate
    offsets = np.concatenate([[0], np.cumsum(has.sum(axis=1))])
    e = int(offsets[-1])
    return PatientEvents.build(subject_id=np.arange(n), sex=np.zeros(n), birth_day=np.zeros(n),
                               offsets=offsets, code=np.nonzero(has)[1], day=np.full(e, 10000),
                               visit=np.zeros(e), pos=np.full(e, 11), codes=codes), has
  (real, x_real), (syn, x_syn) = records(), records()
  seen = x_real.any(axis=0) | x_syn.any(axis=0)  # the codes the agreement is over
  x_real, x_syn = x_real[:, seen], x_syn[:, seen]
  out, arrays = prevalence.prevalence_agreement(real, syn, num_samples=400, seed=0)
  r = out["pearson_r"]
  assert 0.5 < r["value"] < 0.9
  assert r["ci95"][0] < r["value"] < r["ci95"][1]
  np.testing.assert_allclose(metrics.agreement_rows(arrays["real"], arrays["synthetic"])[0, 0], r["value"])

  def over_patients(w):
    w = w.astype(np.float64)
    total = w.sum(axis=1, keepdims=True)
    return metrics.agreement_rows(w @ x_real / total, w @ x_syn / total)
  attenuated = metrics.bootstrap(over_patients, n, 400, 0)
  assert attenuated["value"][0] == pytest.approx(r["value"])
  assert attenuated["ci95"][1][0] < r["value"]  # the interval this replaced missed its estimate


# ---------------------------------------------------------------- truncation
def test_truncate_and_join_restore_the_record(tiny_dataset):
  prompts, true = conditional.truncate(tiny_dataset, 2)
  assert list(prompts.lengths) == [1, 2, 0] and list(true.lengths) == [2, 2, 0]
  assert conditional.code_sequences(true)[1] == ["CCSPX/47", "ICD10CM/D573"]
  assert list(true.visit[:2]) == [0, 1]  # visit numbering continues the prompt's
  assert conditional.join(prompts, true).equals(tiny_dataset)


def test_sample_patients_skips_short_ones(tiny_dataset):
  ds = tiny_dataset.with_splits(np.array([2, 2, 2]))
  idx, counts = conditional.sample_patients(ds, "test", 0, 0, truncate_events=3)
  assert list(idx) == [1]  # 3 events need at least 4; patient 0 has 3 and patient 2 none
  assert counts == dict(split_patients=3, too_short=2, selected=1)


# ---------------------------------------------------------------- membership inference
class _Windowed:
  """Scores at most `window` tokens of a record (BOS excluded: events + EOS), at -1 per token for
  training-split patients and -0.5 for the others."""
  name = "windowed"
  window = 5

  def scored_log_likelihood(self, ds):
    n = np.minimum(ds.lengths + 1, self.window)
    return -n * np.where(ds.split == 0, 1.0, 0.5), n

  def log_likelihood(self, ds):
    return self.scored_log_likelihood(ds)[0]


def _records(num, length, split):
  n = num * length
  return PatientEvents.build(
      subject_id=np.arange(num) + 100 * (split + 1), sex=np.zeros(num), birth_day=np.zeros(num),
      offsets=np.arange(0, n + 1, length), code=np.arange(n) % 3, day=np.full(n, 5000),
      visit=np.zeros(n), pos=np.full(n, 11), codes=["ICD10CM/A00", "ICD10CM/B00", "ICD10CM/C00"],
      split=np.full(num, split))


def test_membership_score_divides_by_the_scored_tokens():
  from rltf_jax.evaluation import privacy
  # Members: long records (20 events, 5 scored tokens at -1 each); non-members: short ones (3
  # events + EOS at -0.5 each). Per scored token the non-members are the likelier ones (AUC 0);
  # dividing by the record's events instead would call the long members likelier (AUC 1).
  out = privacy.membership_inference(_Windowed(), _records(6, 20, 0), _records(6, 3, 2), 20, 0)
  assert out["value"] == 0.0
  assert out["mean_member_ll_per_token"] == -1.0 and out["mean_nonmember_ll_per_token"] == -0.5
  assert out["normalisation"] == "log_likelihood / scored tokens"


def test_transformer_log_likelihood_says_how_many_tokens_it_scored(tiny_dataset):
  from rltf_jax.data.vocab import Vocabulary
  from rltf_jax.sampling.generator import TransformerGenerator
  from test_dpo import tiny_decoder
  ds = conditional.join(tiny_dataset, tiny_dataset)  # 6, 8 and 0 events
  vocab = Vocabulary.build(ds)
  graphdef, params = tiny_decoder(len(vocab))
  gen = TransformerGenerator(graphdef, params, vocab, batch_size=2, max_prompt_len=8)
  ll, n = gen.scored_log_likelihood(ds)
  # The window keeps BOS and the last 7 tokens (events, EOS); every token after BOS is scored.
  assert n.dtype == np.int64 and list(n) == [7, 7, 1]
  np.testing.assert_array_equal(ll, gen.log_likelihood(ds))
  assert ll.dtype == np.float64 and np.all(ll < 0)


def test_head_keeps_the_first_events_of_each_row(tiny_dataset):
  cut = conditional.head(tiny_dataset, 2)
  assert list(cut.lengths) == [2, 2, 0]
  assert conditional.code_sequences(cut)[1] == ["ICD10CM/I10", "ICD10CM/D573"]
  assert conditional.head(tiny_dataset, 10).equals(tiny_dataset)


def test_calibration_ratio_against_hand_counts():
  pred = np.array([1, 1, 1, 0, 0, 0], bool)
  true = np.array([1, 0, 0, 0, 0, 0], bool)
  c = metrics.calibration_ratio(pred, true, 200, 0)
  assert c["value"] == 3.0 and (c["generated"], c["true"], c["patients"]) == (3, 1, 6)
  assert metrics.calibration_ratio(true, true, 50, 0)["value"] == 1.0       # a copy of the truth
  assert metrics.calibration_ratio(~true & False, true, 50, 0)["value"] == 0.0  # never emits it
  assert metrics.calibration_ratio(pred, np.zeros(6, bool), 50, 0)["value"] is None  # undefined


def test_paired_difference_against_hand_computation():
  true = np.array([1, 1, 0, 0], bool)
  a = np.array([1, 1, 0, 0], bool)   # perfect
  b = np.array([1, 0, 1, 0], bool)   # precision 1/2, recall 1/2
  ra, rb = np.array([1.0, 1.0, 1.0, 1.0]), np.array([0.5, 0.5, 0.5, 0.5])
  d = metrics.paired_difference(a, b, true, ra, rb, 300, 0)
  assert d["recall"]["value"] == 0.5 and d["precision"]["value"] == 0.5 and d["f1"]["value"] == 0.5
  assert d["rouge1"]["value"] == 0.5 and d["rouge1"]["ci95"] == [0.5, 0.5]  # paired: no spread
  same = metrics.paired_difference(a, a, true, ra, ra, 300, 0)
  assert all(same[k]["ci95"] == [0.0, 0.0] for k in ("precision", "recall", "f1", "rouge1"))
  with pytest.raises(ValueError):
    metrics.paired_difference(a, b[:3], true, ra, rb, 10, 0)
