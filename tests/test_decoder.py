"""Decoder and token encoding: hand-checked encodings, teacher-forced attributes, KV cache = full pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rltf_jax.configs import base as base_config
from rltf_jax.data.sequences import TokenBatch, encode_patients, lengths
from rltf_jax.data.vocab import BOS, EOS, PAD, Vocabulary
from rltf_jax.errors import DataError
from rltf_jax.models import decoder as dec
from rltf_jax.sampling import sampler


def tiny_model_config():
  c = base_config.get_config().model
  c.width, c.num_layers, c.num_heads = 32, 2, 2
  c.compute_dtype = "float32"  # exact comparisons; bf16 has its own in test_precision
  return c


def random_batch(rng, b=3, l=12, vocab=40, lens=(12, 7, 9)):
  tokens = rng.integers(4, vocab, (b, l)).astype(np.int32)
  tokens[:, 0] = BOS
  visit = np.cumsum(rng.random((b, l)) < 0.3, axis=1).astype(np.int32)
  age = (30 + visit * 0.37).astype(np.float32)
  pos = np.where(visit % 2 == 0, 11, 21).astype(np.int32)
  for i, n in enumerate(lens):
    tokens[i, n - 1] = EOS
    tokens[i, n:], visit[i, n:], age[i, n:], pos[i, n:] = PAD, 0, 0, 0
  return TokenBatch(tokens, visit, age, pos)


def test_encode_patients_by_hand(tiny_dataset):
  vocab = Vocabulary.build(tiny_dataset)
  tok = {c: vocab.id(c) for c in vocab.codes}
  b = encode_patients(tiny_dataset, vocab, [0, 1, 2], 8)
  # Patient 0: E119 I10 | A10BA02 ; patient 2 has no events.
  assert b.tokens[0].tolist() == [BOS, tok["ICD10CM/E119"], tok["ICD10CM/I10"], tok["ATC/A10BA02"], EOS, 0, 0, 0]
  assert b.visit[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
  assert b.pos[1].tolist() == [23, 23, 23, 21, 21, 21, 0, 0]  # BOS/EOS carry their neighbour's place
  np.testing.assert_allclose(b.age[0, :5], [10000 / 365.25] * 3 + [10400 / 365.25] * 2, rtol=1e-6)
  assert b.tokens[2].tolist() == [BOS, EOS, 0, 0, 0, 0, 0, 0]
  assert lengths(b).tolist() == [5, 6, 2]
  # "last" window keeps BOS and the most recent events; BOS takes the first kept event's attributes.
  last = encode_patients(tiny_dataset, vocab, [1], 4)
  assert last.tokens[0].tolist() == [BOS, tok["CCSPX/47"], tok["ICD10CM/D573"], EOS]
  assert last.visit[0].tolist() == [1, 1, 1, 1] and last.pos[0].tolist() == [21] * 4
  prompt = encode_patients(tiny_dataset, vocab, [1], 3, add_eos=False)
  assert prompt.tokens[0].tolist() == [BOS, tok["CCSPX/47"], tok["ICD10CM/D573"]]
  # A random window is a contiguous slice of the full sequence.
  full = encode_patients(tiny_dataset, vocab, [1], 8).tokens[0, :6].tolist()
  for seed in range(5):
    w = encode_patients(tiny_dataset, vocab, [1], 3, window="random", rng=np.random.default_rng(seed))
    s = w.tokens[0].tolist()
    assert any(full[i:i + 3] == s for i in range(4))
  with pytest.raises(DataError):
    encode_patients(tiny_dataset, vocab, [0], 8, window="random")


def test_next_attributes_by_hand():
  b = TokenBatch(tokens=np.array([[BOS, 5, 6, 7, EOS, PAD]]), visit=np.array([[0, 0, 0, 1, 1, 0]]),
                 age=np.array([[30, 30, 30, 30 + 10 / 365.25, 30 + 10 / 365.25, 0]], np.float32),
                 pos=np.array([[11, 11, 11, 23, 23, 0]]))
  a = jax.jit(lambda b: dec.next_attributes(b, dec.next_tokens(b)))(b)
  assert a.new_visit[0].tolist() == [0, 0, 1, 0, 0, 0]
  assert a.gap_days[0].tolist() == [0, 0, 10, 0, 0, 0]
  assert a.gap[0, 2] == np.searchsorted(dec.GAP_EDGES, 10, side="right") - 1  # bucket [8, 11)
  assert a.pos_row[0].tolist() == [11, 11, 23, 23, 0, 0]
  assert int(dec.pos_rows(jnp.array(150))) == 0 and int(dec.pos_rows(jnp.array(81))) == 81


@pytest.fixture(scope="module")
def model():
  return dec.init_decoder(tiny_model_config(), 40, seed=0)


def test_kv_cache_matches_full_forward(model):
  check_kv_cache_matches_full_forward(model, atol=2e-5)


def test_kv_cache_matches_full_forward_bf16():
  """With bf16 matmul operands the prefill rounds what the full pass rounds, but decoding attends
  in float32 (see `Block.finish`): equal to within bf16 rounding, not bit for bit."""
  cfg = tiny_model_config()
  cfg.compute_dtype = "bfloat16"
  check_kv_cache_matches_full_forward(dec.init_decoder(cfg, 40, seed=0), atol=2e-3)


def check_kv_cache_matches_full_forward(model, atol):
  graphdef, params = model
  b = random_batch(np.random.default_rng(0))
  full = jax.jit(dec.forward, static_argnums=0)(graphdef, params, b)["code_logits"]
  attrs = dec.next_attributes(b, dec.next_tokens(b))
  attrs = jax.device_get(attrs)

  @jax.jit
  def all_heads(params, h):  # code logits of hidden h [B, D] under every column's attributes
    m = nnx.merge(graphdef, params)
    return jax.vmap(lambda a: m.code_logits(h, *a), in_axes=1, out_axes=1)(
        (attrs.new_visit, attrs.pos_row, attrs.gap))

  heads = lambda h, t: np.asarray(all_heads(params, h))[:, t]
  # Prompts of different lengths (3, 4, 5 tokens), right-padded to a bucket of 8.
  plen = np.array([3, 4, 5], np.int32)
  prompt = TokenBatch(*(np.where(np.arange(12)[None, :8] < plen[:, None], a[:, :8], 0) for a in b))
  h, cache = jax.jit(sampler.prefill, static_argnums=(0, 4))(graphdef, params, prompt, plen, 6)
  rows = np.arange(3)
  np.testing.assert_allclose(np.stack([heads(h, t)[i] for i, t in enumerate(plen - 1)]),
                             np.stack([full[i, t] for i, t in enumerate(plen - 1)]), atol=atol)
  step_fn = jax.jit(sampler.decode, static_argnums=0)
  for step in range(6):
    t = plen + step
    tok = TokenBatch(*(a[rows, t] for a in b))
    h, cache = step_fn(graphdef, params, tok, cache, step)
    for i in range(3):
      if t[i] < lengths(b)[i]:
        np.testing.assert_allclose(heads(h, t[i])[i], full[i, t[i]], atol=atol)


def test_explicit_mask_and_positions_pack_two_continuations(model):
  """A prompt with two alternative tails packed in one row (the DPO layout) scores each tail as the
  unpacked sequences do, through `attention_mask`, `positions` and `targets`."""
  graphdef, params = model
  rng = np.random.default_rng(1)
  seq = random_batch(rng, b=2, l=8, lens=(8, 8))
  p = 4  # shared prompt = first 4 tokens; tails = tokens 4..7 of each row
  # Both rows share row 0's prompt: row 1 = row 0's prompt + row 1's tail.
  seq = TokenBatch(*(np.concatenate([a[:1], np.concatenate([a[:1, :p], a[1:2, p:]], 1)]) for a in seq))
  logprobs = jax.jit(dec.code_logprobs, static_argnums=0)
  unpacked = np.asarray(logprobs(graphdef, params, seq))
  packed = TokenBatch(*(np.concatenate([a[0:1, :p], a[0:1, p:], a[1:2, p:]], axis=1) for a in seq))
  n = packed.tokens.shape[1]  # 12: prompt 0..3, tail A 4..7, tail B 8..11
  seg = np.array([0] * p + [1] * 4 + [2] * 4)
  q, k = np.arange(n)[:, None], np.arange(n)[None, :]
  mask = (k <= q) & ((seg[k] == 0) | (seg[k] == seg[q]))
  positions = np.concatenate([np.arange(8), np.arange(4, 8)])[None]
  # Targets: prompt's last token is followed by tail A's first token (tail B's first target is
  # scored separately below by the unpacked row).
  nxt = lambda a: np.concatenate([a[:, 1:], np.zeros_like(a[:, :1])], 1)
  targets = TokenBatch(*(nxt(a) for a in packed))
  targets = TokenBatch(*(np.where(np.arange(n)[None] == 7, 0, a) for a in targets))  # end of tail A
  got = np.asarray(logprobs(graphdef, params, packed, positions=positions,
                                     attention_mask=mask[None], targets=targets))
  np.testing.assert_allclose(got[0, :7], unpacked[0, :7], atol=2e-5)   # prompt + tail A
  np.testing.assert_allclose(got[0, 8:11], unpacked[1, 4:7], atol=2e-5)  # tail B


def factorised_model(head_codes=10, tail_rank=8):
  cfg = tiny_model_config()
  cfg.head_codes, cfg.tail_rank = head_codes, tail_rank
  return dec.init_decoder(cfg, 40, seed=3)


def test_factorised_head_is_one_distribution_and_every_path_scores_it_alike():
  """The frequency-factorised code head (model.head_codes): its [.., V] output is a normalised
  log-distribution, and `code_logprobs` (which skips the full softmax and gathers the tail's
  positions into a budget) gives the same numbers as picking from it, both when the tail codes fit
  the budget and when they do not (the exact branch). The KV-cache path agrees with the full pass."""
  graphdef, params = model = factorised_model()
  assert "tail_unembed" in params and params["unembed"]["kernel"].shape == (32, 11)
  for hi, within_budget in ((40, False), (12, True)):   # codes 10, 11 are the tail's first two
    rng = np.random.default_rng(hi)
    b = random_batch(rng, b=4, l=16, vocab=hi, lens=(16, 9, 12, 5))
    targets = np.asarray(dec.next_tokens(b).tokens)
    real = targets != PAD
    assert ((targets[real] >= 10).sum() <= real.size // 4) == within_budget
    logits = jax.jit(dec.forward, static_argnums=0)(graphdef, params, b)["code_logits"]
    np.testing.assert_allclose(np.asarray(jax.nn.logsumexp(logits, -1)), 0.0, atol=1e-5)
    picked = np.take_along_axis(np.asarray(logits), targets[..., None], -1)[..., 0]
    lp = np.asarray(jax.jit(dec.code_logprobs, static_argnums=0)(graphdef, params, b))
    np.testing.assert_allclose(lp[real], picked[real], atol=1e-5)
    assert np.all(lp[~real] == 0.0)
    # Gradients reach the tail's parameters exactly when some target is a tail code.
    grad = jax.grad(lambda p: dec.code_logprobs(graphdef, p, b).sum())(params)
    assert np.abs(np.asarray(grad["tail_unembed"]["kernel"])).sum() > 0
  check_kv_cache_matches_full_forward(model, atol=2e-5)


def test_factorised_head_falls_back_to_one_head_when_the_vocabulary_is_small():
  graphdef, params = factorised_model(head_codes=40)
  assert "tail_unembed" not in params and params["unembed"]["kernel"].shape == (32, 40)
