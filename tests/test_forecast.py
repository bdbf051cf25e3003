"""The forecast evaluator: the masked-draw estimator of p_i against exact and sampled answers, the
logit bias in closed form against the sampler, the anchors' known answers, the stratified bootstrap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rltf_jax.configs import base as base_config
from rltf_jax.data.sequences import TokenBatch
from rltf_jax.data.vocab import BOS, EOS, PAD, UNK
from rltf_jax.evaluation import forecast, metrics
from rltf_jax.models import decoder as dec
from rltf_jax.sampling import sampler

VOCAB = 30
TARGET = np.zeros(VOCAB, bool)
TARGET[[7, 11, 12, 20, 25, 29]] = True


@pytest.fixture(scope="module")
def model():
  c = base_config.get_config().model
  c.width, c.num_layers, c.num_heads = 32, 1, 2
  c.compute_dtype = "float32"
  return dec.init_decoder(c, VOCAB, seed=5)


def prompts(rows):
  rng = np.random.default_rng(1)
  tokens = rng.integers(4, VOCAB, (rows, 5)).astype(np.int32)
  tokens[:, 0] = BOS
  plen = np.tile(np.array([5, 3, 1, 4], np.int32), rows // 4)
  tokens[np.arange(5)[None] >= plen[:, None]] = PAD
  return TokenBatch(tokens, np.zeros((rows, 5), np.int32), np.full((rows, 5), 50.0, np.float32),
                    np.full((rows, 5), 11, np.int32)), plen


def test_one_step_estimate_is_the_exact_probability(model):
  """After BOS alone the first event's attributes are fixed (same visit, place, no gap), so the
  first step's target probability is one number, computed here from the model directly."""
  graphdef, params = model
  p, plen = prompts(4)
  bos_row = np.flatnonzero(plen == 1)
  out = sampler.sample(graphdef, params, p, plen, max_new=1, seed=0, target_mask=TARGET,
                       mask_target=True)
  h, _ = sampler.prefill(graphdef, params, p, jnp.asarray(plen), 1)
  m = nnx.merge(graphdef, params)
  last_pos = jnp.asarray(p.pos[np.arange(4), plen - 1])
  logits = m.code_logits(h, jnp.zeros(4, jnp.int32), dec.pos_rows(last_pos), jnp.zeros(4, jnp.int32))
  logits = logits.at[:, jnp.array([PAD, BOS, UNK])].set(-1e30)
  exact = np.asarray(jax.nn.softmax(logits, -1))[:, TARGET].sum(-1)
  mass = out["target_mass"][:, 0]
  np.testing.assert_allclose(mass[bos_row], exact[bos_row], rtol=1e-5)
  assert forecast.target_probability(mass[:, None, None])[bos_row] == pytest.approx(exact[bos_row], rel=1e-5)
  assert not TARGET[out["tokens"][:, 0]].any()  # masked: a target is never drawn


def test_masked_estimate_agrees_with_hits_and_never_draws_the_target(model):
  graphdef, params = model
  k, horizon = 300, 3
  p, plen = prompts(4)
  rep = TokenBatch(*(np.repeat(a, k, axis=0) for a in p))
  rep_len = np.repeat(plen, k)
  masked = sampler.sample(graphdef, params, rep, rep_len, max_new=horizon, seed=1, target_mask=TARGET,
                          mask_target=True)
  free = sampler.sample(graphdef, params, rep, rep_len, max_new=horizon, seed=2, target_mask=TARGET)
  live = np.arange(horizon)[None] < masked["num_new"][:, None]
  assert not (TARGET[masked["tokens"]] & live).any()
  est = forecast.target_probability(masked["target_mass"].reshape(4, k, horizon))
  live = np.arange(horizon)[None] < free["num_new"][:, None]
  hits = (TARGET[free["tokens"]] & live).any(1).reshape(4, k).mean(1)
  se = np.sqrt(np.maximum(hits * (1 - hits), 0.01) / k)
  assert 0.15 < est.mean() < 0.9  # a common target: the comparison has power
  assert np.all(np.abs(est - hits) < 4 * se), (est, hits)


def test_logit_bias_in_closed_form_equals_sampling_with_it(model):
  """Masked draws do not depend on the bias, so the bias's p is exact from unbiased draws."""
  graphdef, params = model
  p, plen = prompts(8)
  run = lambda b: sampler.sample(graphdef, params, p, plen, max_new=4, seed=3, target_mask=TARGET,
                                 target_bias=b, mask_target=True)
  plain, biased = run(0.0), run(1.7)
  before = sampler._sample_jit._cache_size()
  run(-2.0)
  assert sampler._sample_jit._cache_size() == before  # the bias is traced
  np.testing.assert_array_equal(plain["tokens"], biased["tokens"])
  np.testing.assert_allclose(forecast.biased_mass(plain["target_mass"], 1.7), biased["target_mass"],
                             rtol=1e-4, atol=1e-6)
  # Without a target set the sampler is the program it always was.
  a = sampler.sample(graphdef, params, p, plen, max_new=4, seed=3)
  assert "target_mass" not in a


def test_tuned_bias_reaches_calibration_one():
  rng = np.random.default_rng(0)
  mass = rng.beta(0.3, 30, (4000, 4, 5))
  true_bias = 1.3
  y = rng.random(4000) < forecast.target_probability(mass, true_bias)
  w = rng.choice([1.0, 7.0], 4000)
  b = forecast.tune_bias(mass, y, w)
  calibrated = forecast.target_probability(mass, b)
  assert w @ calibrated == pytest.approx(w @ y, rel=1e-6)
  assert b == pytest.approx(true_bias, abs=0.25)


def test_anchor_known_answers():
  rng = np.random.default_rng(0)
  n = 3000
  y = rng.random(n) < 0.05
  w = rng.choice([1.0, 5.0], n)
  B = 200
  truth = forecast.stratum_metrics(y.astype(float), y, w, B, 0)
  assert truth["calibration"]["value"] == pytest.approx(1.0) and truth["auroc"]["value"] == 1.0
  assert truth["brier"]["value"] == 0.0 and truth["expected_recall"]["value"] == 1.0
  never = forecast.stratum_metrics(np.zeros(n), y, w, B, 0)
  assert never["calibration"]["value"] == 0.0 and never["auroc"]["value"] == 0.5
  q = 0.02
  const = forecast.stratum_metrics(np.full(n, q), y, w, B, 0)
  prevalence = (w @ y) / w.sum()
  assert const["auroc"]["value"] == 0.5
  assert const["calibration"]["value"] == pytest.approx(q / prevalence)
  lo, hi = const["calibration"]["ci95"]
  assert lo < q / prevalence < hi
  assert truth["positives"] == int(y.sum()) and truth["patients"] == n


def test_stratified_bootstrap_keeps_each_cells_size():
  cells = np.array([0] * 5 + [1] * 95)
  for block in metrics.bootstrap_weights(100, 50, 0, cells):
    assert np.all(block[:, :5].sum(1) == 5) and np.all(block[:, 5:].sum(1) == 95)
  plain = next(metrics.bootstrap_weights(100, 200, 0))
  assert np.ptp(plain[:, :5].sum(1)) > 0  # unstratified, the small cell's size varies


def test_reliability_bins_count_every_patient():
  p = np.array([0.0, 5e-5, 0.003, 0.3, 0.9])
  y = np.array([0, 0, 1, 0, 1], bool)
  rel = forecast.reliability(p, y, np.ones(5))
  assert sum(b["patients"] for b in rel["bins"]) == 5
  assert rel["bins"][-1]["observed"] == 1.0 and rel["bins"][-1]["mean_p"] == 0.9


def test_stratum_biases_calibrate_each_stratum():
  rng = np.random.default_rng(2)
  n = 3000
  in_prompt = rng.random(n) < 0.3
  mass = np.where(in_prompt[:, None, None], rng.beta(0.2, 40, (n, 4, 5)), rng.beta(0.5, 20, (n, 4, 5)))
  y = np.where(in_prompt, rng.random(n) < 0.8, rng.random(n) < 0.01)
  w = np.where(in_prompt, 2.0, 50.0)
  b = forecast.stratum_biases(mass, y, in_prompt, w)
  assert b["repeat"] > 0 > b["new_onset"]  # under-written where the prompt holds it, over elsewhere
  for name, m in (("new_onset", ~in_prompt), ("repeat", in_prompt)):
    p = forecast.target_probability(mass[m], b[name])
    assert w[m] @ p == pytest.approx(w[m] @ y[m], rel=1e-6)


def test_per_row_bias_moves_only_its_rows(model):
  graphdef, params = model
  p, plen = prompts(8)
  bias = np.array([0, 3, 0, 3, 0, 3, 0, 3], np.float32)
  run = lambda b: sampler.sample(graphdef, params, p, plen, max_new=3, seed=4, target_mask=TARGET,
                                 target_bias=b, mask_target=True)
  plain, mixed = run(0.0), run(bias)
  np.testing.assert_array_equal(plain["tokens"], mixed["tokens"])
  np.testing.assert_allclose(forecast.biased_mass(plain["target_mass"][1::2], 3.0),
                             mixed["target_mass"][1::2], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(plain["target_mass"][::2], mixed["target_mass"][::2], rtol=1e-6)


def test_ceiling_is_calibrated_where_fitted_and_discriminates_held_out_patients():
  from test_preference import COHORT, random_dataset
  ds = random_dataset(num_patients=800, seed=5, target_rate=0.3)
  rng = np.random.default_rng(0)
  truth = ds.patients_with_any(COHORT.codes) & (rng.random(800) < 0.9)  # the prompt says a lot
  weights = np.where(truth, 1.0, 4.0)
  fit_rows = np.arange(0, 800, 2)
  p = forecast.ceiling_probability(ds, truth, weights, fit_rows, iterations=30, threads=1, depth=3,
                                   seed=0)
  # The logistic map's intercept makes the fitted rows' weighted calibration exact.
  assert weights[fit_rows] @ p[fit_rows] == pytest.approx(weights[fit_rows] @ truth[fit_rows], rel=1e-3)
  held = np.arange(1, 800, 2)
  assert metrics.auroc(p[held], truth[held])[0] > 0.85
  assert 0.7 < (weights[held] @ p[held]) / (weights[held] @ truth[held]) < 1.4
