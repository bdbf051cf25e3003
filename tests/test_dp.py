"""DP-SGD fine-tuning: clipping and noise against a hand computation, the accountant against the
Gaussian mechanism's exact curve, Poisson batches, a DP fine-tune's spent epsilon, and DP off
leaving the step bit-identical."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import stats

from rltf_jax import runs
from rltf_jax.errors import ConfigError
from rltf_jax.training import dp, loop


# ---------------------------------------------------------------------------- the step by hand
def linear_loss(params, batch):
  """Per row: x . w + z . b, so a row's gradient is (x, z) exactly; the batch loss is the mean."""
  x, z = batch
  per_row = x @ params["w"] + z @ params["b"]
  return per_row.mean(), dict(tokens=jnp.asarray(x.shape[0], jnp.float32))


def private_update(x, z, mask, *, clip, sigma, expected, seed=3, step=0):
  params = dict(w=jnp.zeros(x.shape[1]), b=jnp.zeros(z.shape[1]))
  opt = optax.sgd(1.0)  # update = -gradient
  state = dict(params=params, opt_state=opt.init(params), step=jnp.asarray(step, jnp.int32))
  fn = jax.jit(loop.make_private_step(linear_loss, opt, clip_norm=clip, noise_multiplier=sigma,
                                      expected_batch=expected, seed=seed))
  new, metrics = fn(state, (jnp.asarray(mask), (jnp.asarray(x), jnp.asarray(z))))
  return {k: -np.asarray(v) for k, v in new["params"].items()}, {k: float(v) for k, v in metrics.items()}


def test_private_step_clips_each_row_and_divides_by_the_expected_batch():
  x = np.array([[3.0, 0.0], [0.3, 0.4], [10.0, 10.0], [1.0, 1.0]], np.float32)
  z = np.array([[4.0], [0.0], [0.0], [1.0]], np.float32)
  mask = np.array([1, 1, 1, 0], np.float32)  # the last row is padding
  grad, m = private_update(x, z, mask, clip=1.0, sigma=0.0, expected=2.0)
  # Row norms over (w, b): 5, 0.5, 14.14 -> scales 0.2, 1, 1/14.14; the padded row is dropped.
  scale = np.array([0.2, 1.0, 1 / math.hypot(10, 10), 0.0])
  np.testing.assert_allclose(grad["w"], (scale[:, None] * x).sum(0) / 2.0, rtol=1e-6)
  np.testing.assert_allclose(grad["b"], (scale[:, None] * z).sum(0) / 2.0, rtol=1e-6)
  assert m["dp_rows"] == 3 and m["dp_clipped_fraction"] == pytest.approx(2 / 3)
  assert m["tokens"] == 3  # a sum over the used rows
  assert m["dp_example_grad_norm"] == pytest.approx((5 + 0.5 + math.hypot(10, 10)) / 3, rel=1e-6)


def test_private_step_adds_gaussian_noise_of_sigma_times_clip_over_the_batch():
  d = 20_000
  x, z = np.zeros((4, d), np.float32), np.zeros((4, 1), np.float32)
  mask = np.ones(4, np.float32)
  sigma, clip, expected = 2.0, 0.5, 4.0
  g0, _ = private_update(x, z, mask, clip=clip, sigma=sigma, expected=expected, step=0)
  g0_again, _ = private_update(x, z, mask, clip=clip, sigma=sigma, expected=expected, step=0)
  g1, _ = private_update(x, z, mask, clip=clip, sigma=sigma, expected=expected, step=1)
  noise = g0["w"]
  assert abs(noise.mean()) < 4 * 0.25 / math.sqrt(d)
  assert noise.std() == pytest.approx(sigma * clip / expected, rel=0.03)  # 0.25
  assert stats.normaltest(noise).pvalue > 1e-3
  np.testing.assert_array_equal(noise, g0_again["w"])  # a resumed step draws the same noise
  assert abs(np.corrcoef(noise, g1["w"])[0, 1]) < 0.05  # another step, independent noise
  # The exact draw: the step's key (seed folded with the step), one key per parameter leaf.
  keys = jax.random.split(jax.random.fold_in(jax.random.key(3), 0), 2)
  expected_w = sigma * clip * np.asarray(jax.random.normal(keys[1], (d,))) / expected
  np.testing.assert_allclose(noise, expected_w, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------- accounting
def exact_gaussian_epsilon(sigma: float, delta: float) -> float:
  """The Gaussian mechanism's exact epsilon at delta (Balle & Wang 2018, sensitivity 1)."""
  def delta_of(eps):
    return stats.norm.cdf(-eps * sigma + 0.5 / sigma) - math.exp(eps) * stats.norm.cdf(-eps * sigma - 0.5 / sigma)
  lo, hi = 0.0, 100.0
  for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if delta_of(mid) > delta else (lo, mid)
  return hi


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0])
def test_the_accountant_lies_between_the_exact_gaussian_curve_and_the_plain_renyi_bound(sigma):
  delta = 1e-5
  eps = dp.rdp_epsilon(sigma, 1.0, 1, delta)  # one unsampled step: the Gaussian mechanism
  exact = exact_gaussian_epsilon(sigma, delta)
  plain_rdp = min(a / (2 * sigma ** 2) + math.log(1 / delta) / (a - 1) for a in np.linspace(1.01, 400, 40_000))
  assert exact <= eps <= plain_rdp * (1 + 1e-6)


def test_calibrated_noise_is_the_smallest_within_the_target():
  q, steps, delta = 8 / 1000, 250, 1e-5
  for target in (1.0, 8.0):
    sigma = dp.calibrate_noise(target, q, steps, delta)
    assert dp.rdp_epsilon(sigma, q, steps, delta) <= target
    assert dp.rdp_epsilon(sigma * 0.99, q, steps, delta) > target
  assert dp.rdp_epsilon(1.0, q, 2 * steps, delta) > dp.rdp_epsilon(1.0, q, steps, delta)


def dp_section(epsilon=8.0, batch_size=8, delta=1e-5, clip=1.0):
  return ml_collections.ConfigDict(dict(batch_size=batch_size, seed=0, dp=dict(
      epsilon=epsilon, delta=delta, clip_norm=clip, seed=0)))


def test_plan_refuses_a_delta_above_one_over_n_and_a_batch_of_everyone():
  with pytest.raises(ConfigError, match="dp.delta"):
    dp.plan(dp_section(delta=0.01), 1000, 10)
  with pytest.raises(ConfigError, match="batch_size"):
    dp.plan(dp_section(batch_size=64), 64, 10)
  with pytest.raises(ConfigError, match="subject 7"):
    dp.check_one_row_per_patient(np.array([1, 7, 3, 7]))


def test_poisson_batches_take_each_pair_with_probability_q_and_replay_by_step():
  p = dp.plan(dp_section(), 1000, 250)
  assert p.max_rows % 1 == 0 and p.max_rows > p.expected_batch
  # The overflow probability is the binomial tail over the run.
  p_step = stats.binom.sf(p.max_rows, 1000, p.sampling_rate)
  assert p.overflow_probability == pytest.approx(1 - (1 - p_step) ** 250, rel=1e-3)
  assert p.overflow_probability < dp.OVERFLOW_BOUND
  counts, seen = [], np.zeros(1000)
  for i in range(2000):
    rows, mask, truncated = dp.poisson_rows(i, p, 0)
    assert not truncated and rows.shape == mask.shape == (p.max_rows,)
    used = rows[mask > 0]
    assert len(np.unique(used)) == len(used)
    counts.append(len(used))
    seen[used] += 1
  assert np.mean(counts) == pytest.approx(8.0, rel=0.03)
  assert np.var(counts) == pytest.approx(1000 * 0.008 * 0.992, rel=0.1)
  assert seen.mean() / 2000 == pytest.approx(0.008, rel=0.03)
  r1, m1, _ = dp.poisson_rows(5, p, 0)
  r2, m2, _ = dp.poisson_rows(5, p, 0)
  np.testing.assert_array_equal(r1, r2)
  rows, mask, truncated = dp.poisson_rows(0, dataclasses.replace(p, max_rows=2), 0)
  assert truncated and mask.sum() == 2


def test_private_step_on_packed_pairs_without_noise_or_clipping_is_the_ordinary_step():
  """vmap over packed DPO rows (each a batch of one) gives the ordinary batch gradient: the DPO
  loss is a mean over rows, so the mean of per-row gradients is the batch gradient."""
  from rltf_jax.training import dpo
  from rltf_jax.training.pairs import pack_pairs
  from rltf_jax.data.vocab import Vocabulary
  from rltf_jax.models.decoder import init_decoder
  from rltf_jax.training.preference import build_preference_data
  from rltf_jax.configs import base as base_config
  from test_preference import COHORT, random_dataset, rltf_cfg
  ds = random_dataset(num_patients=120, seed=11, max_events=10)
  vocab = Vocabulary.build(ds, always_include=COHORT.codes)
  data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=4, max_prompt_events=5,
                                                    max_continuation_events=5))
  model_cfg = base_config.get_config().model
  model_cfg.width, model_cfg.num_layers, model_cfg.num_heads, model_cfg.head_codes = 16, 1, 1, 0
  graphdef, params = init_decoder(model_cfg, len(vocab), seed=0)
  packed = pack_pairs(data, vocab)
  ref = jnp.asarray(np.array([-20.0, -25.0, -18.0, -30.0], np.float32))
  batch = (jax.tree.map(jnp.asarray, packed), ref, ref - 1.0)
  loss = dpo.make_loss(graphdef, beta=0.5, lam=0.1, placement="outside")
  opt = optax.sgd(1.0)
  state = lambda: dict(params=params, opt_state=opt.init(params), step=jnp.zeros((), jnp.int32))
  plain, m_plain = jax.jit(loop.make_step(loss, opt))(state(), batch)
  private, m_private = jax.jit(loop.make_private_step(loss, opt, clip_norm=1e9, noise_multiplier=0.0,
                                                      expected_batch=4.0, seed=0))(state(), (jnp.ones(4), batch))
  for x, y in zip(jax.tree.leaves(plain["params"]), jax.tree.leaves(private["params"])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=1e-6)
  assert float(m_private["loss"]) == pytest.approx(float(m_plain["loss"]), rel=1e-5)
  assert float(m_private["tokens"]) == float(m_plain["tokens"])


# ---------------------------------------------------------------------------- fine-tunes
def _finetune(method, cfg, pairs, path):
  from rltf_jax.training import dpo, sft
  from test_dpo import pretrained_base
  _, _, base_dir, _ = pretrained_base()
  fn = dpo.finetune_dpo if method == "rltf" else sft.finetune_sft
  return fn(cfg, base_dir, pairs, path, verbose=False)


@pytest.fixture(scope="module")
def base_and_pairs():
  from rltf_jax.data.cohorts import get_cohort
  from rltf_jax.training.preference import build_preference_data
  from test_dpo import pretrained_base
  cfg, ds, base_dir, root = pretrained_base()
  cfg = cfg.copy_and_resolve_references()
  cfg.rltf.num_pairs, cfg.rltf.epochs, cfg.rltf.ckpt_every = 40, 1, 100
  pairs = build_preference_data(ds, get_cohort("dm"), cfg.rltf, root / "pref-dp")
  return cfg, pairs, root


@pytest.mark.parametrize("method", ["rltf", pytest.param("sft", marks=pytest.mark.slow)])
def test_dp_off_leaves_the_fine_tune_bit_identical(base_and_pairs, method):
  """epsilon 0 against a config with no `dp` section at all (the code before DP): the same run
  identity and the same parameters, bit for bit."""
  from rltf_jax.checkpoints import load_decoder
  cfg, pairs, root = base_and_pairs
  without = cfg.copy_and_resolve_references()
  del without[method]["dp"]
  a = _finetune(method, cfg, pairs, root / f"{method}-dp-off")
  b = _finetune(method, without, pairs, root / f"{method}-no-dp")
  key = lambda p: json.loads((p / runs.RUN_FILE).read_text())["key"]
  assert key(a) == key(b) and not (a / "dp.json").exists()
  for x, y in zip(jax.tree.leaves(load_decoder(a)[1]), jax.tree.leaves(load_decoder(b)[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("method", ["rltf", pytest.param("sft", marks=pytest.mark.slow)])
def test_dp_fine_tune_spends_at_most_its_epsilon(base_and_pairs, method):
  from rltf_jax.checkpoints import load_decoder
  from rltf_jax.training import finetune
  cfg, pairs, root = base_and_pairs
  cfg = cfg.copy_and_resolve_references()
  cfg.rltf.dp.epsilon = 8.0
  cfg.sft.dp.epsilon = 8.0
  run = _finetune(method, cfg, pairs, root / f"{method}-dp8")
  info = finetune.dp_info(run)
  assert info["enabled"] and 0 < info["spent_epsilon"] <= 8.0
  assert info["steps"] == 5 and info["truncated_steps"] == 0 and info["pairs"] == 40
  assert "training split" in info["covers"]  # these pairs come from the base model's own patients
  lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert "dp_clipped_fraction" in lines[-1] and lines[-1]["dp_rows"] >= 0
  assert runs.is_done(run)
  off = root / f"{method}-dp-off"
  if off.exists():  # the DP run trained differently
    a, b = load_decoder(run)[1], load_decoder(off)[1]
    assert any(not np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_a_dp_fine_tune_does_not_depend_on_the_one_before_it_in_the_process(base_and_pairs):
  """The noise multiplier is a constant of the compiled DP step, calibrated to the number of pairs.
  Two fine-tunes with the same config and step count but 40 and 38 pairs (5 steps of 8 either way)
  must not share a compiled step: the second's parameters are those it gets alone."""
  from rltf_jax.checkpoints import load_decoder
  from rltf_jax.data.cohorts import get_cohort
  from rltf_jax.training import loop
  from rltf_jax.training.preference import build_preference_data
  from test_dpo import pretrained_base
  cfg, pairs, root = base_and_pairs
  cfg = cfg.copy_and_resolve_references()
  cfg.rltf.dp.epsilon = 8.0
  fewer_cfg = cfg.copy_and_resolve_references()
  fewer_cfg.rltf.num_pairs = 38
  _, ds, _, _ = pretrained_base()
  fewer = build_preference_data(ds, get_cohort("dm"), fewer_cfg.rltf, root / "pref-dp38")
  assert fewer.num_pairs == 38 and pairs.num_pairs == 40
  # The 40-pair run of `test_dp_fine_tune_spends_at_most_its_epsilon` (reused, its step compiled
  # in this process, when that test ran first; trained here otherwise).
  _finetune("rltf", cfg, pairs, root / "rltf-dp8")
  after = _finetune("rltf", cfg, fewer, root / "rltf-dp8-38-after")
  loop._COMPILED.clear()  # as a fresh process
  alone = _finetune("rltf", cfg, fewer, root / "rltf-dp8-38-alone")
  for x, y in zip(jax.tree.leaves(load_decoder(after)[1]), jax.tree.leaves(load_decoder(alone)[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
