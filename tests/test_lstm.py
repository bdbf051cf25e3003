"""LSTM baseline: shapes and masks, beam search, overfitting, training/resume, the Generator contract."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rltf_jax import runs
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import BOS, EOS, PAD, UNK, Vocabulary
from rltf_jax.errors import ConfigError
from rltf_jax.generator import Generator
from rltf_jax.models.lstm import LSTMLM
from rltf_jax.sampling.baseline_generators import LSTMGenerator
from rltf_jax.sampling.beam import beam_search, greedy_search
from rltf_jax.training import baselines

from fit import fit


def _cfg(**kw):
  c = dict(embed_dim=8, hidden_dim=16, num_layers=1, learning_rate=1e-2, batch_size=4, epochs=2,
           max_len=16, max_new_tokens=512, beam_width=2, length_penalty=0.0, seed=0)
  c.update(kw)
  return ml_collections.ConfigDict(dict(lstm=c))


def _patients(sequences, codes):
  """One visit per two events, 30 days apart, office visits."""
  lens = [len(s) for s in sequences]
  visit = np.concatenate([np.arange(n) // 2 for n in lens])
  n = len(sequences)
  return PatientEvents.build(
      subject_id=np.arange(100, 100 + n), sex=np.zeros(n), birth_day=np.zeros(n),
      offsets=np.concatenate([[0], np.cumsum(lens)]), code=np.concatenate(sequences),
      day=10000 + 30 * visit, visit=visit, pos=np.full(len(visit), 11), codes=codes)


CODES = [f"ICD10CM/A{i:02d}" for i in range(8)]
SEQS = [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2], [6, 7, 6, 7, 6, 1, 2], [1, 1, 3, 3, 5]]


def test_shapes_and_padding_masks():
  model = LSTMLM(12, 8, 16, 2, rngs=nnx.Rngs(0))
  tokens = jnp.array([[BOS, 4, 5, 6, 7], [BOS, 8, 9, PAD, PAD]], jnp.int32)
  assert model(tokens).shape == (2, 5, 12)
  # Prefill of a right-padded row ends in the state after its last real token.
  logits, carry = model.prefill(tokens, tokens != PAD)
  np.testing.assert_allclose(logits[1], model(tokens[1:, :3])[0, -1], atol=1e-5)
  np.testing.assert_allclose(logits[0], model(tokens[:1])[0, -1], atol=1e-5)
  assert all(c.shape == (2, 16) and h.shape == (2, 16) for c, h in carry)
  # PAD targets carry no loss: an extra all-PAD row changes neither loss nor weight.
  loss, n = baselines.lstm_loss(model, tokens)
  loss2, n2 = baselines.lstm_loss(model, jnp.concatenate([tokens, jnp.zeros_like(tokens[:1])]))
  assert float(n) == 4 + 2 and float(n2) == float(n)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)


def _table_step(table):
  """A 'model' whose next-token distribution depends only on the last token."""
  table = jnp.log(jnp.asarray(table) + 1e-30)
  return lambda carry, tok: (table[tok], tok)


def test_beam_finds_the_better_sequence_greedy_misses():
  # Tokens: 4 = A, 5 = B. Start: A 0.6, B 0.4. After A: EOS 0.5, A 0.25, B 0.25. After B: EOS 0.99.
  # Greedy: [A] (0.6 * 0.5 = 0.30). Width 2: [B] (0.4 * 0.99 = 0.396).
  t = np.zeros((6, 6))
  t[4, [EOS, 4, 5]] = [0.5, 0.25, 0.25]
  t[5, [EOS, 4, 5]] = [0.99, 0.005, 0.005]
  start = jnp.log(jnp.array([[1e-30, 1e-30, 1e-30, 1e-30, 0.6, 0.4]]))
  step = _table_step(t)
  carry = jnp.array([BOS])
  g_tok, g_len, g_score = greedy_search(step, carry, start, max_new=5)
  b_tok, b_len, b_score = beam_search(step, carry, start, beam_width=2, max_new=5)
  assert g_tok[0, :int(g_len[0])].tolist() == [4]
  assert b_tok[0, :int(b_len[0])].tolist() == [5]
  np.testing.assert_allclose(g_score[0], np.log(0.3), rtol=1e-5)
  np.testing.assert_allclose(b_score[0], np.log(0.396), rtol=1e-5)
  # The length budget stops a sequence that never ends.
  loop = np.zeros((6, 6))
  loop[4, 4] = 1.0
  tok, n, _ = beam_search(_table_step(loop), carry, start, beam_width=2, max_new=3)
  assert n.tolist() == [3] and tok[0].tolist() == [4, 4, 4]


def test_beam_width_one_equals_greedy():
  model = LSTMLM(20, 8, 16, 2, rngs=nnx.Rngs(3))
  tokens = jnp.asarray(np.random.default_rng(0).integers(4, 20, (5, 6)), jnp.int32).at[:, 0].set(BOS)
  logits, carry = model.prefill(tokens, tokens != PAD)
  banned = jnp.zeros(20, bool).at[jnp.array([BOS, UNK])].set(True)
  b = beam_search(model.step, carry, logits, beam_width=1, max_new=12, banned_V=banned)
  g = greedy_search(model.step, carry, logits, max_new=12, banned_V=banned)
  np.testing.assert_array_equal(b[0], g[0])
  np.testing.assert_array_equal(b[1], g[1])
  np.testing.assert_allclose(b[2], g[2], rtol=1e-5)


def test_tiny_model_overfits_and_completes_its_patients():
  ds = _patients(SEQS, CODES)
  vocab = Vocabulary.build(ds)
  from rltf_jax.data import sequences
  tokens = jnp.asarray(sequences.encode_patients(ds, vocab, np.arange(len(SEQS)), 10).tokens)
  model = LSTMLM(len(vocab), 16, 64, 1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  params, _, loss = fit(lambda p: baselines.lstm_loss(nnx.merge(graphdef, p), tokens)[0], params,
                       optax.adam(2e-2), 150)
  # The only uncertainty left is the first code after BOS (4 equally likely): the floor is
  # 4 * ln 4 nats over the 26 targets.
  floor = 4 * np.log(4) / sum(len(s) + 1 for s in SEQS)
  assert float(loss) < floor + 0.02
  gen = LSTMGenerator(nnx.merge(graphdef, params), vocab, _attrs(), beam_width=2,
                      max_new_tokens=16, max_len=32, batch_size=4)
  # Each patient's first three events identify it; the model must continue with the rest, then stop.
  prompts = ds.select(np.arange(len(SEQS)))
  prompts = PatientEvents.build(
      subject_id=prompts.subject_id, sex=prompts.sex, birth_day=prompts.birth_day,
      offsets=np.arange(0, 3 * len(SEQS) + 1, 3),
      code=np.concatenate([np.asarray(s[:3]) for s in SEQS]),
      day=np.full(3 * len(SEQS), 10000), visit=np.zeros(3 * len(SEQS)), pos=np.full(3 * len(SEQS), 11),
      codes=CODES)
  out = gen.complete(prompts, max_new_events=16, seed=0)
  for i, s in enumerate(SEQS):
    assert list(out.patient(i)["code"]) == [CODES[c] for c in s[3:]]
  ll = gen.log_likelihood(ds)
  assert ll.dtype == np.float64 and np.all(ll <= 0)
  np.testing.assert_allclose(ll, -np.log(4), atol=0.3)
  # It scores every event and EOS of each record, and says so (the membership score's divisor).
  same, scored = gen.scored_log_likelihood(ds)
  np.testing.assert_array_equal(same, ll)
  assert scored.dtype == np.int64 and np.array_equal(scored, ds.lengths + 1)


def _attrs():
  return dict(gaps=np.array([7, 7]), pos=np.array([11]), first_age_days=np.array([3650]),
              events_per_visit=np.float64(2.0))


def test_train_resume_skip_and_generator_contract(tmp_path):
  ds = _patients(SEQS * 3, CODES)
  vocab = Vocabulary.build(ds)
  full = baselines.train_lstm(_cfg(epochs=2), ds, vocab, tmp_path / "full")
  # An interrupted run (epoch 1 checkpointed, not finished) resumes to the same parameters.
  per_epoch = -(-ds.num_patients // _cfg().lstm.batch_size)
  part = baselines.train_lstm(_cfg(epochs=2), ds, vocab, tmp_path / "part", stop_after=per_epoch)
  assert not runs.is_done(part)
  baselines.train_lstm(_cfg(epochs=2), ds, vocab, tmp_path / "part")
  rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]
  a = nnx.state(LSTMGenerator.load(full).params)
  b = nnx.state(LSTMGenerator.load(part).params)
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
  # Finished: a rerun returns without training; other settings are refused.
  mtime = (full / runs.RUN_FILE).stat().st_mtime
  assert baselines.train_lstm(_cfg(epochs=2), ds, vocab, full) == full
  assert (full / runs.RUN_FILE).stat().st_mtime == mtime
  with pytest.raises(ConfigError, match="other data or settings"):
    baselines.train_lstm(_cfg(epochs=2, hidden_dim=8), ds, vocab, full)

  gen = LSTMGenerator.load(full, batch_size=8)
  assert isinstance(gen, Generator)
  prompts = ds.select(np.arange(5))
  out = gen.complete(prompts, max_new_events=6, seed=1)
  assert out.num_patients == 5 and np.array_equal(out.subject_id, prompts.subject_id)
  assert np.all(out.lengths <= 6)
  last_visit = prompts.visit[prompts.offsets[1:] - 1]
  last_day = prompts.day[prompts.offsets[1:] - 1]
  for i in range(5):
    p = out.patient(i)
    if len(p["code"]):
      assert p["visit"][0] == last_visit[i] + 1          # a new visit after the prompt
      assert np.all(np.diff(p["visit"]) >= 0) and np.all(p["day"] >= last_day[i] + 7)
      assert np.all(p["pos"] == 11) and set(p["code"]) <= set(CODES)
      # Cut into visits of round(mean events per visit) = 2 events.
      assert np.all(np.bincount(p["visit"] - p["visit"][0]) <= 2)
