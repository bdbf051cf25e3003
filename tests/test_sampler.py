"""Sampler: greedy limits, filters, determinism, no recompiles, EOS; the generator's events and MEDS."""

import jax.numpy as jnp
import numpy as np
import pytest

from rltf_jax.configs import base as base_config
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.sequences import TokenBatch
from rltf_jax.data.vocab import BOS, EOS, PAD, Vocabulary
from rltf_jax.models import decoder as dec
from rltf_jax.sampling import sampler
from rltf_jax.sampling.generator import TransformerGenerator


@pytest.fixture(scope="module")
def model():
  c = base_config.get_config().model
  c.width, c.num_layers, c.num_heads = 32, 1, 2
  c.compute_dtype = "float32"  # greedy-limit checks compare exact argmaxes
  return dec.init_decoder(c, 30, seed=3)


def prompts():
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 30, (4, 6)).astype(np.int32)
  tokens[:, 0] = BOS
  plen = np.array([6, 3, 1, 4], np.int32)
  tokens[np.arange(6)[None] >= plen[:, None]] = PAD
  visit = np.zeros((4, 6), np.int32)
  return TokenBatch(tokens, visit, np.full((4, 6), 50.0, np.float32), np.full((4, 6), 11, np.int32)), plen


def test_pick_filters_by_hand():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
  u = 1.0 - jnp.asarray(np.random.default_rng(0).random(2000), jnp.float32)
  draw = lambda t, k, p: np.bincount(np.asarray(sampler._pick(logits, u, t, k, p)), minlength=4) / 2000
  np.testing.assert_allclose(draw(1.0, 0, 1.0), [0.5, 0.3, 0.15, 0.05], atol=0.04)
  np.testing.assert_allclose(draw(1.0, 2, 1.0), [0.625, 0.375, 0, 0], atol=0.04)  # renormalised top 2
  np.testing.assert_allclose(draw(1.0, 0, 0.7), [0.625, 0.375, 0, 0], atol=0.04)  # 0.5 + 0.3 >= 0.7
  assert draw(1.0, 0, 0.4)[0] == 1.0  # the top entry alone reaches 0.4
  assert draw(0.0, 0, 1.0)[0] == 1.0 and draw(1e-6, 0, 1.0)[0] == 1.0 and draw(1.0, 1, 1.0)[0] == 1.0


def test_greedy_limits_agree_and_controls_do_not_recompile(model):
  graphdef, params = model
  p, plen = prompts()
  run = lambda **kw: sampler.sample(graphdef, params, p, plen, max_new=12, **kw)
  greedy = run(temperature=0.0, seed=1)
  before = sampler._sample_jit._cache_size()
  for kw in (dict(temperature=1e-6, seed=2), dict(top_k=1, seed=3), dict(top_k=1, top_p=0.5, seed=4)):
    out = run(**kw)
    for k in ("tokens", "visit", "pos", "gap_days", "num_new"):
      np.testing.assert_array_equal(out[k], greedy[k], err_msg=f"{kw} {k}")
  a, b, c = run(seed=5), run(seed=5), run(seed=6, temperature=1.5, top_p=0.9)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["tokens"], c["tokens"])
  assert sampler._sample_jit._cache_size() == before  # controls and seeds are traced


def test_output_structure_and_min_new(model):
  graphdef, params = model
  p, plen = prompts()
  out = sampler.sample(graphdef, params, p, plen, max_new=12, seed=0)
  for row in range(4):
    n = out["num_new"][row]
    toks = out["tokens"][row]
    assert np.all(toks[:n] >= 4)                 # codes only: no PAD/BOS/UNK/EOS before the end
    if n < 12:
      assert toks[n] == EOS and np.all(toks[n + 1:] == PAD)
    v = out["visit"][row, :n]
    assert np.all(np.diff(np.concatenate([[0], v])) >= 0)
    # Gaps are zero within a visit and the age grows by the gaps.
    same = np.diff(np.concatenate([[p.visit[row, plen[row] - 1]], v])) == 0
    assert np.all(out["gap_days"][row, :n][same] == 0)
  forced = sampler.sample(graphdef, params, p, plen, max_new=12, seed=0, min_new=12)
  assert np.all(forced["num_new"] == 12)


def test_generator_complete_generate_and_meds(model, tiny_dataset, tmp_path):
  graphdef, params = model
  codes = [f"ICD10CM/A{i:02d}" for i in range(26)]
  vocab = Vocabulary(("<pad>", "<bos>", "<eos>", "<unk>") + tuple(codes))
  prior = dict(sex=np.array([0, 1], np.int8), birth_day=np.array([0, 5000], np.int32),
               age=np.array([30.0, 40.0], np.float32), pos=np.array([11, 22], np.int32),
               day=np.array([10957, 19610], np.int32))
  gen = TransformerGenerator(graphdef, params, vocab, start_prior=prior, batch_size=4, max_prompt_len=16)
  out = gen.complete(tiny_dataset, max_new_events=12, seed=0)
  assert isinstance(out, PatientEvents) and out.num_patients == 3
  np.testing.assert_array_equal(out.subject_id, tiny_dataset.subject_id)
  for p in range(2):  # continuations start at or after the prompt's last visit and day
    got, prompt = out.patient(p), tiny_dataset.patient(p)
    if len(got["code"]):
      assert got["visit"][0] >= prompt["visit"][-1] and got["day"][0] >= prompt["day"][-1]
  assert np.array_equal(out.lengths, gen.complete(tiny_dataset, max_new_events=12, seed=0).lengths)
  synth = gen.generate_patients(5, seed=1, max_events=12)
  assert synth.num_patients == 5 and np.all(synth.lengths <= 12)
  assert set(synth.birth_day) <= {0, 5000} and np.all(synth.visit[synth.offsets[:-1][synth.lengths > 0]] == 0)
  ll = gen.log_likelihood(tiny_dataset)
  assert ll.dtype == np.float64 and ll.shape == (3,) and np.all(ll < 0)
  meds = pytest.importorskip("rltf_jax.data.meds")
  meds.write_meds(synth, tmp_path / "meds")
  back, _ = meds.read_meds(tmp_path / "meds")
  assert back.num_events == synth.num_events and np.array_equal(back.day, synth.day)
