"""The LSTM and HALO baselines behind the `rltf_jax.generator.Generator` interface.

Both continue each prompt row and return `PatientEvents` whose code table is the shared
vocabulary's codes. Neither model predicts dates or places of service, so generated events get
them by one documented rule (`_place_events`), from statistics of the training data saved beside
the checkpoint (`attributes.npz`):

* The continuation starts a new visit (numbered after the prompt's last visit).
* Each new visit is dated the previous visit's day plus an inter-visit gap drawn from the
  training data's gaps (an empty prompt's first visit: birth day plus an age at first visit drawn
  from the training data). Age follows from the day and the birth day.
* Place of service: the prompt's last visit's, carried forward (an empty prompt: drawn from the
  training data's visits).
* LSTM: the model emits a flat code sequence, cut into visits of round(mean events per visit in
  the training data) events each. HALO: its own visits (empty generated visits are dropped).

LSTM decoding is beam search (`rltf_jax.sampling.beam`; the paper's baseline), deterministic: the
seed only draws the dates. PAD, BOS and UNK are never generated. A prompt longer than the training
window (`lstm.max_len`) is read from its last `max_len - 1` events.

HALO samples every code bit from its Bernoulli (ancestral sampling); it can only generate codes in
its capped vocabulary, and only codes and the end bit (never label, start or pad bits) in a visit.
HALO conditions on labels (the cohort's codes anywhere in the record), which for a truncated
patient would leak the hidden future. `halo.label_mode="sample"` (default) therefore sets the
labels seen in the prompt and draws the others from HALO's own label distribution;
`"prompt"` uses the prompt's labels only (then HALO rarely writes a label code the prompt lacks).
A prompt's most recent `max_visits - 3` visits are its context (slot positions restart there).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rltf_jax.data import sequences
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import BOS, NUM_SPECIAL, PAD, UNK, Vocabulary
from rltf_jax.errors import ConfigError
from rltf_jax.checkpoints import load_baseline_files, restore_module
from rltf_jax.models.halo import HALO, HALOLayout, build_halo
from rltf_jax.models.lstm import build_lstm, length_buckets
from rltf_jax.sampling.beam import beam_search


def _chunks(n: int, size: int):
  """Row ranges of `size` (the last one padded by the caller, so shapes never change)."""
  for i in range(0, n, size):
    yield np.arange(i, min(i + size, n))


def _pad_rows(a: np.ndarray, size: int) -> np.ndarray:
  return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)]) if len(a) < size else a


def _place_events(prompts: PatientEvents, counts: np.ndarray, new_visit: np.ndarray,
                  token: np.ndarray, vocab: Vocabulary, attrs: dict, seed: int) -> PatientEvents:
  """Builds the continuation dataset: `counts[p]` events per row, their 0-based new-visit numbers
  `new_visit` and tokens `token` (flat, row by row); dates and places per the module docstring."""
  rng = np.random.default_rng(seed)
  p_of = np.repeat(np.arange(prompts.num_patients), counts)
  plen = prompts.lengths
  has = plen > 0
  last = np.maximum(prompts.offsets[1:] - 1, 0)
  ev = prompts.num_events > 0
  last_visit = np.where(has, prompts.visit[last] if ev else 0, -1)
  last_pos = np.where(has, prompts.pos[last] if ev else 0,
                      rng.choice(attrs["pos"], prompts.num_patients))
  first_day = prompts.birth_day + rng.choice(attrs["first_age_days"], prompts.num_patients)
  last_day = np.where(has, prompts.day[last] if ev else 0, first_day)
  # Day of new visit j of row p: last_day + gaps[0..j] (an empty prompt's first visit: no gap).
  n_new = np.zeros(prompts.num_patients, np.int64)
  if len(new_visit):
    np.maximum.at(n_new, p_of, new_visit + 1)
  gaps = rng.choice(attrs["gaps"], int(n_new.sum())).astype(np.int64)
  vis_p = np.repeat(np.arange(prompts.num_patients), n_new)
  first_of_row = np.concatenate([[0], np.cumsum(n_new)[:-1]])
  gaps[first_of_row[(n_new > 0) & ~has]] = 0
  cum = np.cumsum(gaps)
  cum_before = np.concatenate([[0], cum])[first_of_row]
  visit_day = last_day[vis_p] + cum - cum_before[vis_p]
  ev_visit_flat = first_of_row[p_of] + new_visit
  offsets = np.zeros(prompts.num_patients + 1, np.int64)
  np.cumsum(counts, out=offsets[1:])
  return PatientEvents.build(
      subject_id=prompts.subject_id, sex=prompts.sex, birth_day=prompts.birth_day,
      split=prompts.split, offsets=offsets, code=(token - NUM_SPECIAL).astype(np.int32),
      day=visit_day[ev_visit_flat] if len(token) else np.zeros(0, np.int32),
      visit=(last_visit[p_of] + 1 + new_visit).astype(np.int32),
      pos=last_pos[p_of].astype(np.int16), codes=np.asarray(vocab.codes, str),
      source="generated continuation")


# ---------------------------------------------------------------- LSTM
class LSTMGenerator:
  """The LSTM baseline: beam search over code tokens."""
  name = "lstm"

  def __init__(self, model, vocab: Vocabulary, attrs: dict, *, beam_width: int,
               max_new_tokens: int, max_len: int, length_penalty: float = 0.0,
               batch_size: int = 64):
    if beam_width < 1:
      raise ConfigError(f"lstm.beam_width must be >= 1, got {beam_width}")
    self.vocab, self.attrs = vocab, attrs
    self.beam_width, self.max_new_tokens, self.max_len = beam_width, max_new_tokens, max_len
    self.length_penalty, self.batch_size = length_penalty, batch_size
    self.graphdef, self.params = nnx.split(model)
    banned = np.zeros(len(vocab), bool)
    banned[[PAD, BOS, UNK]] = True
    self.banned = jnp.asarray(banned)

  @classmethod
  def load(cls, ckpt_dir: str | Path, *, beam_width: int | None = None,
           batch_size: int = 64) -> "LSTMGenerator":
    meta, vocab, attrs = load_baseline_files(ckpt_dir, "lstm")
    model = restore_module(ckpt_dir, build_lstm(meta))
    c = meta["config"]
    return cls(model, vocab, attrs, beam_width=beam_width or c["beam_width"],
               max_new_tokens=c["max_new_tokens"], max_len=c["max_len"],
               length_penalty=c["length_penalty"], batch_size=batch_size)

  @functools.partial(jax.jit, static_argnames=("self", "max_new"))
  def _decode(self, params, tokens_BxL, max_new):
    model = nnx.merge(self.graphdef, params)
    logits, carry = model.prefill(tokens_BxL, tokens_BxL != PAD)
    step = lambda c, t: model.step(c, t)
    return beam_search(step, carry, logits, beam_width=self.beam_width, max_new=max_new,
                       banned_V=self.banned, length_penalty=self.length_penalty)[:2]

  def complete(self, prompts: PatientEvents, *, max_new_events: int, seed: int) -> PatientEvents:
    max_new = int(min(max_new_events, self.max_new_tokens))
    if max_new < 1:
      raise ConfigError(f"max_new_events must be >= 1, got {max_new_events}")
    buckets = length_buckets(self.max_len)
    # Prompts of similar length share a chunk (less padding in the prefill); the last
    # `max_len - 1` events of a longer prompt are its context, as in training.
    order = np.argsort(prompts.lengths, kind="stable")
    tokens = np.zeros((prompts.num_patients, max_new), np.int32)
    counts = np.zeros(prompts.num_patients, np.int64)
    for chunk in _chunks(prompts.num_patients, self.batch_size):
      rows = order[chunk]
      width = sequences.bucket_length(int(prompts.lengths[rows].max()) + 1, buckets)
      tb = sequences.encode_patients(prompts, self.vocab, _pad_rows(rows, self.batch_size), width,
                                     window="last", add_eos=False)
      tok, n = self._decode(self.params, jnp.asarray(tb.tokens), max_new)
      tokens[rows] = np.asarray(tok)[:len(rows)]
      counts[rows] = np.asarray(n)[:len(rows)]
    flat = tokens[np.arange(tokens.shape[1])[None, :] < counts[:, None]]
    k = max(int(round(float(self.attrs["events_per_visit"]))), 1)
    pos_in_row = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    return _place_events(prompts, counts, pos_in_row // k, flat, self.vocab, self.attrs, seed)

  @functools.partial(jax.jit, static_argnames=("self",))
  def _ll(self, params, tokens_BxL):
    model = nnx.merge(self.graphdef, params)
    lp = jax.nn.log_softmax(model(tokens_BxL[:, :-1]).astype(jnp.float32), axis=-1)
    tgt = tokens_BxL[:, 1:]
    ll = jnp.take_along_axis(lp, tgt[..., None], axis=-1)[..., 0]
    return jnp.where(tgt != PAD, ll, 0.0).sum(-1)

  def log_likelihood(self, dataset: PatientEvents) -> np.ndarray:
    """float64 [P]: log p(code tokens and EOS | BOS) of each whole patient (codes outside the
    vocabulary count as UNK)."""
    return self.scored_log_likelihood(dataset)[0]

  def scored_log_likelihood(self, dataset: PatientEvents) -> tuple[np.ndarray, np.ndarray]:
    """(`log_likelihood`, int64 [P] tokens scored: every event and EOS, i.e. events + 1)."""
    order = np.argsort(dataset.lengths, kind="stable")
    out = np.zeros(dataset.num_patients, np.float64)
    scored = np.zeros(dataset.num_patients, np.int64)
    for chunk in _chunks(dataset.num_patients, self.batch_size):
      rows = order[chunk]
      width = sequences.pow2_length(int(dataset.lengths[rows].max()) + 2)
      tb = sequences.encode_patients(dataset, self.vocab, _pad_rows(rows, self.batch_size), width)
      out[rows] = np.asarray(self._ll(self.params, jnp.asarray(tb.tokens)))[:len(rows)]
      scored[rows] = (tb.tokens[:len(rows), 1:] != PAD).sum(-1)  # the targets `_ll` sums over
    return out, scored

  # The jitted methods take `self` as a static argument: hash by identity.
  __hash__ = object.__hash__


# ---------------------------------------------------------------- HALO
def sample_visit(model: HALO, history_BxD, forced_BxV, allowed_V, key):
  """Samples one visit bit by bit in code order (ancestral sampling through the masked head).

  Bits are Bernoulli(sigmoid(logit)); a zero bit leaves the head's input unchanged, so each pass
  draws all remaining bits at once and keeps only the first one that came up 1 (or is forced):
  one pass per set bit plus one, as in the official sampler. Bits outside `allowed_V` are never
  set unless forced.
  """
  batch, vocab = forced_BxV.shape
  col = jnp.arange(vocab)
  rows = jnp.arange(batch)

  def cond(s):
    return jnp.any(s[2])

  def body(s):
    v, start, active, key = s
    key, sub = jax.random.split(key)
    p = jax.nn.sigmoid(model.code_logits(history_BxD, v).astype(jnp.float32))
    bits = ((jax.random.uniform(sub, p.shape) < p) & allowed_V) | forced_BxV
    cand = bits & (col[None, :] >= start[:, None])
    active = active & cand.any(1)
    first = jnp.argmax(cand, axis=1)
    v = v.at[rows, first].set(jnp.where(active, 1.0, v[rows, first]))
    return v, jnp.where(active, first + 1, start), active, key

  init = (jnp.zeros((batch, vocab), jnp.float32), jnp.zeros(batch, jnp.int32),
          jnp.ones(batch, bool), key)
  return jax.lax.while_loop(cond, body, init)[0]


class HALOGenerator:
  """HALO: visit by visit, each visit sampled code by code."""
  name = "halo"

  def __init__(self, model: HALO, layout: HALOLayout, vocab: Vocabulary, attrs: dict, *,
               label_mode: str = "sample", batch_size: int = 128):
    if label_mode not in ("sample", "prompt"):
      raise ConfigError(f"halo.label_mode must be 'sample' or 'prompt', got {label_mode!r}")
    self.layout, self.vocab, self.attrs = layout, vocab, attrs
    self.label_mode, self.batch_size = label_mode, batch_size
    self.graphdef, self.params = nnx.split(model)

  @classmethod
  def load(cls, ckpt_dir: str | Path, *, label_mode: str | None = None,
           batch_size: int = 128) -> "HALOGenerator":
    meta, vocab, attrs = load_baseline_files(ckpt_dir, "halo")
    layout = HALOLayout.load(Path(ckpt_dir) / "layout.npz")
    model = restore_module(ckpt_dir, build_halo(meta))
    return cls(model, layout, vocab, attrs, batch_size=batch_size,
               label_mode=label_mode or meta["config"]["label_mode"])

  __hash__ = object.__hash__

  @functools.partial(jax.jit, static_argnames=("self", "sample_labels"))
  def _generate(self, params, x_BxTxV, n_prompt_B, max_new, key, sample_labels):
    """Fills slots n_prompt + 2 .. of each row; returns the visits and the next free slot."""
    model = nnx.merge(self.graphdef, params)
    lay = self.layout
    batch, slots, vocab = x_BxTxV.shape
    col = jnp.arange(vocab)
    rows = jnp.arange(batch)
    if sample_labels:
      # The label visit, drawn from the model's prior with the labels the prompt shows forced on.
      key, sub = jax.random.split(key)
      is_label = (col >= lay.num_codes) & (col < lay.start)
      h = model.history(x_BxTxV)[:, 0]
      forced = (x_BxTxV[:, 1] > 0) & is_label
      x_BxTxV = x_BxTxV.at[:, 1].set(sample_visit(model, h, forced, is_label, sub))
    allowed = (col < lay.num_codes) | (col == lay.end)
    no_force = jnp.zeros((batch, vocab), bool)

    def cond(s):
      return jnp.any(~s[2])

    def body(s):
      x, t, done, count, key = s
      key, sub = jax.random.split(key)
      h = model.history(x)[rows, t - 1]
      v = sample_visit(model, h, no_force, allowed, sub)
      at = jnp.minimum(t, slots - 1)
      x = x.at[rows, at].set(jnp.where(done[:, None], x[rows, at], v))
      count = count + jnp.where(done, 0, v[:, :lay.num_codes].sum(-1).astype(jnp.int32))
      t = jnp.where(done, t, t + 1)
      done = done | (v[:, lay.end] > 0) | (t >= slots) | (count >= max_new)
      return x, t, done, count, key

    t0 = n_prompt_B + 2
    init = (x_BxTxV, t0, t0 >= slots, jnp.zeros(batch, jnp.int32), key)
    x, t, _, _, _ = jax.lax.while_loop(cond, body, init)
    return x, t

  def complete(self, prompts: PatientEvents, *, max_new_events: int, seed: int) -> PatientEvents:
    """Continues each prompt's visits. The prompt's most recent max_visits - 3 visits (in HALO's
    vocabulary) are the context; its labels are the cohort codes seen in the prompt, and with
    `label_mode="sample"` the other labels are drawn from the model (the true future is unknown)."""
    if max_new_events < 1:
      raise ConfigError(f"max_new_events must be >= 1, got {max_new_events}")
    lay = self.layout
    visits = lay.encode(prompts, self.vocab, keep="last", max_slots=lay.max_visits - 3)
    key = jax.random.key(seed)
    tok_rows, visit_rows, counts = [], [], np.zeros(prompts.num_patients, np.int64)
    for i, rows in enumerate(_chunks(prompts.num_patients, self.batch_size)):
      padded = _pad_rows(rows, self.batch_size)
      x, _ = lay.dense(visits, padded, prompt=True)
      n = visits.num_visits[padded]
      xs, t = self._generate(self.params, jnp.asarray(x), jnp.asarray(n, jnp.int32),
                             jnp.int32(max_new_events), jax.random.fold_in(key, i),
                             sample_labels=self.label_mode == "sample")
      xs, t = np.asarray(xs)[:len(rows)], np.asarray(t)[:len(rows)]
      for j, r in enumerate(rows):  # a small per-row gather: ~max_new_events events each
        new = xs[j, n[j] + 2:t[j], :lay.num_codes] > 0
        nonempty = new.any(1)
        vi, ci = np.nonzero(new[nonempty])
        keep = min(len(ci), max_new_events)
        tok_rows.append(lay.code_tokens[ci[:keep]])
        visit_rows.append(vi[:keep])
        counts[r] = keep
    flat_tok = np.concatenate(tok_rows) if tok_rows else np.zeros(0, np.int32)
    flat_visit = np.concatenate(visit_rows) if visit_rows else np.zeros(0, np.int64)
    return _place_events(prompts, counts, flat_visit, flat_tok, self.vocab, self.attrs, seed)

  @functools.partial(jax.jit, static_argnames=("self",))
  def _ll(self, params, x, mask):
    logits = nnx.merge(self.graphdef, params)(x).astype(jnp.float32)
    target = x[:, 1:]
    ll = target * jax.nn.log_sigmoid(logits) + (1 - target) * jax.nn.log_sigmoid(-logits)
    return (ll.sum(-1) * mask).sum(-1)

  def log_likelihood(self, dataset: PatientEvents) -> np.ndarray:
    """float64 [P]: HALO's Bernoulli log-likelihood of each patient's label visit and visits (every
    bit of every visit, end bit included), as the official evaluation computes it. Only codes in
    HALO's vocabulary and the first max_visits - 2 visits are seen."""
    return self.scored_log_likelihood(dataset)[0]

  def scored_log_likelihood(self, dataset: PatientEvents) -> tuple[np.ndarray, np.ndarray]:
    """(`log_likelihood`, int64 [P] tokens scored). HALO's tokens are visit vectors: the label
    visit and each kept visit (the prediction mask), at most max_visits - 1."""
    visits = self.layout.encode(dataset, self.vocab, keep="first")
    out, scored = [], []
    for rows in _chunks(dataset.num_patients, self.batch_size):
      x, mask = self.layout.dense(visits, _pad_rows(rows, self.batch_size))
      out.append(np.asarray(self._ll(self.params, jnp.asarray(x), jnp.asarray(mask)))[:len(rows)])
      scored.append(mask[:len(rows)].sum(-1).astype(np.int64))
    if not out:
      return np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(out).astype(np.float64), np.concatenate(scored)
