"""HALO (Theodorou, Xiao and Sun, Nature Communications 2023) as a Flax NNX module.

A patient is a sequence of visits, each a multi-hot vector over HALO's total vocabulary

    [ codes (C) | labels (Lb) | start | end | pad ]

laid out as in the official implementation: slot 0 holds the start token, slot 1 the label visit
(the patient's labels as a multi-hot over the label codes), slots 2.. the visits; the last real
visit also carries the end bit and later slots the pad bit. A coarse GPT-2 style transformer reads
the visit vectors (a bias-free linear embedding of the multi-hot plus learned positions) causally
over visits. The code-level head then makes the visit autoregressive over codes: it applies two
masked square linear layers (ReLU between) to [history_t ; visit_{t+1}] and reads logit k at output
index width - 1 + k. Output index o only sees inputs i <= o, so logit k sees the whole history
(inputs 0..width-1) and codes 0..k-1 of its own visit, never code k or any later code. Each bit is
a Bernoulli variable with that logit.

Memory. The head's two matrices are (width + V) x (width + V) each, V the total vocabulary: at the
official width 768 and a claims vocabulary of V ~ 8000 that is 2 x 8768^2 ~ 154M parameters (0.6 GB
in float32, 2.5 GB with Adam's moments and the gradient), at the simulator's ~17k codes 640M
(10 GB with Adam); quadratic in V, and the visit tensors of a batch are B x visits x V. The project therefore caps HALO's code vocabulary
(`cfg.halo.max_codes`: the most frequent codes of the shared vocabulary plus every cohort code;
0 keeps all) -- see `HALOLayout`. Codes outside the cap are invisible to HALO and never generated;
a low-rank head would be the other way out, but it would no longer be the published model.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rltf_jax import io
from rltf_jax.data.events import PatientEvents, gather_ranges
from rltf_jax.data.vocab import NUM_SPECIAL, Vocabulary
from rltf_jax.errors import ConfigError, DataError


class Block(nnx.Module):
  """Pre-LayerNorm transformer block (GPT-2), causal over visits."""

  def __init__(self, width: int, num_heads: int, *, rngs: nnx.Rngs):
    init = nnx.initializers.normal(0.02)
    self.num_heads = num_heads
    self.ln1 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
    self.qkv = nnx.Linear(width, 3 * width, kernel_init=init, rngs=rngs)
    self.proj = nnx.Linear(width, width, kernel_init=init, rngs=rngs)
    self.ln2 = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
    self.fc = nnx.Linear(width, 4 * width, kernel_init=init, rngs=rngs)
    self.fc_out = nnx.Linear(4 * width, width, kernel_init=init, rngs=rngs)

  def __call__(self, x_BxTxD):
    b, t, d = x_BxTxD.shape
    h = self.num_heads
    q, k, v = jnp.split(self.qkv(self.ln1(x_BxTxD)), 3, axis=-1)
    q, k, v = (a.reshape(b, t, h, d // h) for a in (q, k, v))
    att = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x_BxTxD = x_BxTxD + self.proj(att.reshape(b, t, d))
    return x_BxTxD + self.fc_out(jax.nn.gelu(self.fc(self.ln2(x_BxTxD)), approximate=True))


class MaskedLinear(nnx.Module):
  """A square linear layer whose output o depends only on inputs i <= o (lower-triangular mask)."""

  def __init__(self, size: int, *, rngs: nnx.Rngs):
    bound = size ** -0.5  # PyTorch nn.Linear's default range, as the official head uses
    self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (size, size), jnp.float32, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (size,), jnp.float32, -bound, bound))

  def __call__(self, x):
    size = self.kernel.shape[0]
    # kernel[i, o] is used only where i <= o; built each call (XLA fuses it into the matmul).
    mask = jnp.arange(size)[:, None] <= jnp.arange(size)[None, :]
    return x @ jnp.where(mask, self.kernel.value, 0.0) + self.bias.value


class HALO(nnx.Module):
  """Coarse visit transformer + autoregressive code-level head."""

  def __init__(self, total_vocab: int, width: int, num_layers: int, num_heads: int,
               max_visits: int, *, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"HALO width {width} is not divisible by num_heads {num_heads}")
    init = nnx.initializers.normal(0.02)
    self.total_vocab, self.width, self.max_visits = total_vocab, width, max_visits
    self.visit_embed = nnx.Linear(total_vocab, width, use_bias=False, kernel_init=init, rngs=rngs)
    self.pos_embed = nnx.Embed(max_visits, width, embedding_init=init, rngs=rngs)
    self.blocks = nnx.List([Block(width, num_heads, rngs=rngs) for _ in range(num_layers)])
    self.ln_f = nnx.LayerNorm(width, epsilon=1e-5, rngs=rngs)
    self.head1 = MaskedLinear(width + total_vocab, rngs=rngs)
    self.head2 = MaskedLinear(width + total_vocab, rngs=rngs)

  def history(self, visits_BxTxV: jax.Array) -> jax.Array:
    """Coarse transformer: [B, T, width], position t summarising visits 0..t."""
    t = visits_BxTxV.shape[1]
    x = self.visit_embed(visits_BxTxV) + self.pos_embed(jnp.arange(t))[None]
    for block in self.blocks:
      x = block(x)
    return self.ln_f(x)

  def code_logits(self, history_xD: jax.Array, visit_xV: jax.Array) -> jax.Array:
    """Logits of every bit of `visit` given the history before it and the lower bits of itself."""
    z = self.head2(jax.nn.relu(self.head1(jnp.concatenate([history_xD, visit_xV], axis=-1))))
    return z[..., self.width - 1:-1]

  def __call__(self, visits_BxTxV: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, T - 1, V]: row t predicts visit t + 1."""
    h = self.history(visits_BxTxV)
    return self.code_logits(h[:, :-1], visits_BxTxV[:, 1:])


# ---------------------------------------------------------------- data layout
@dataclasses.dataclass(frozen=True)
class HALOLayout:
  """HALO's vocabulary and visit tensors, built on the project's shared `Vocabulary`.

  HALO code c is shared-vocabulary token `code_tokens[c]`; the codes are the `max_codes` most
  frequent codes of the vocabulary (its ids are in descending training frequency) plus every label
  code. The labels are the cohort's codes (`label_tokens`); a patient's label bit is set when the
  code occurs anywhere in the patient's record. Events whose code is outside HALO's vocabulary are
  dropped, a visit is the set of its distinct codes, and visits left empty are dropped.
  """
  code_tokens: np.ndarray   # int32 [C]
  label_tokens: np.ndarray  # int32 [Lb]
  max_visits: int           # slots: start, labels and up to max_visits - 2 visits

  @property
  def num_codes(self) -> int:
    return len(self.code_tokens)

  @property
  def num_labels(self) -> int:
    return len(self.label_tokens)

  @property
  def start(self) -> int:
    return self.num_codes + self.num_labels

  @property
  def end(self) -> int:
    return self.start + 1

  @property
  def pad(self) -> int:
    return self.start + 2

  @property
  def total(self) -> int:
    return self.start + 3

  @classmethod
  def build(cls, vocab: Vocabulary, label_codes: Sequence[str], max_codes: int,
            max_visits: int) -> "HALOLayout":
    if max_visits < 3:
      raise ConfigError(f"halo.max_visits={max_visits} leaves no slot for a visit (need >= 3)")
    labels = [c for c in label_codes if c in vocab]
    if not labels:
      raise DataError(f"none of the label codes {', '.join(label_codes)} is in the vocabulary; "
                      "build the vocabulary with the cohort codes in `always_include`")
    label_tokens = vocab.ids(labels)
    n = len(vocab) - NUM_SPECIAL if max_codes <= 0 else min(max_codes, len(vocab) - NUM_SPECIAL)
    code_tokens = np.union1d(np.arange(NUM_SPECIAL, NUM_SPECIAL + n), label_tokens).astype(np.int32)
    return cls(code_tokens, label_tokens.astype(np.int32), int(max_visits))

  def save(self, path) -> None:
    io.atomic_savez(path, code_tokens=self.code_tokens, label_tokens=self.label_tokens,
                    max_visits=np.int64(self.max_visits))

  @classmethod
  def load(cls, path) -> "HALOLayout":
    a = io.load_npz(path)
    return cls(a["code_tokens"], a["label_tokens"], int(a["max_visits"]))

  def encode(self, ds: PatientEvents, vocab: Vocabulary, *, keep: str = "first",
             max_slots: int | None = None) -> "HALOVisits":
    """Sparse visits of every patient of `ds`.

    `keep="first"` keeps the first `max_slots` visits (training; default max_visits - 2) and marks
    longer patients truncated (no end bit); `keep="last"` keeps the most recent ones (prompts).
    """
    max_slots = self.max_visits - 2 if max_slots is None else max_slots
    token = vocab.encode(ds)
    code_lut = np.full(len(vocab), -1, np.int64)
    code_lut[self.code_tokens] = np.arange(self.num_codes)
    label_lut = np.full(len(vocab), -1, np.int64)
    label_lut[self.label_tokens] = np.arange(self.num_labels)
    ev_patient = ds.event_patient()
    labels = np.zeros((ds.num_patients, self.num_labels), bool)
    has_label = label_lut[token] >= 0
    labels[ev_patient[has_label], label_lut[token[has_label]]] = True

    code = code_lut[token]
    sel = code >= 0
    p, v, c = ev_patient[sel], ds.visit[sel].astype(np.int64), code[sel]
    # Distinct (patient, visit, code) triples in that order.
    key = np.unique((p * (int(v.max(initial=0)) + 1) + v) * self.num_codes + c)
    c = key % self.num_codes
    pv = key // self.num_codes
    pair, rank_of = np.unique(pv, return_inverse=True)
    pair_patient = pair // (int(v.max(initial=0)) + 1)
    n_visits = np.bincount(pair_patient, minlength=ds.num_patients)
    first_pair = np.concatenate([[0], np.cumsum(n_visits)[:-1]])
    rank = rank_of - first_pair[pair_patient[rank_of]]      # visit rank within the patient
    patient = pair_patient[rank_of]
    if keep == "first":
      drop = np.zeros(ds.num_patients, np.int64)
    elif keep == "last":
      drop = np.maximum(n_visits - max_slots, 0)
    else:
      raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
    rank = rank - drop[patient]
    ok = (rank >= 0) & (rank < max_slots)
    offsets = np.zeros(ds.num_patients + 1, np.int64)
    np.cumsum(np.bincount(patient[ok], minlength=ds.num_patients), out=offsets[1:])
    return HALOVisits(offsets=offsets, slot=(rank[ok] + 2).astype(np.int32),
                      code=c[ok].astype(np.int32),
                      num_visits=np.minimum(n_visits, max_slots).astype(np.int32),
                      truncated=n_visits > max_slots, labels=labels)

  def dense(self, visits: "HALOVisits", rows: np.ndarray,
            prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(visits float32 [B, T, total], prediction mask float32 [B, T - 1]) for patients `rows`.

    Row t of the mask weights the prediction of slot t + 1: the label visit and every visit
    (the last one with its end bit, unless the patient was truncated). `prompt=True` leaves out
    the end and pad bits: the record goes on.
    """
    rows = np.asarray(rows, np.int64)
    b, t = len(rows), self.max_visits
    x = np.zeros((b, t, self.total), np.float32)
    x[:, 0, self.start] = 1.0
    x[:, 1, self.start - self.num_labels:self.start] = visits.labels[rows]
    lens = visits.offsets[rows + 1] - visits.offsets[rows]
    ev = gather_ranges(visits.offsets[rows], lens)
    x[np.repeat(np.arange(b), lens), visits.slot[ev], visits.code[ev]] = 1.0
    n = visits.num_visits[rows]
    mask = (np.arange(t - 1)[None, :] <= n[:, None]).astype(np.float32)
    if prompt:
      return x, mask
    ends = ~visits.truncated[rows]
    x[np.flatnonzero(ends), (n + 1)[ends], self.end] = 1.0
    slots = np.arange(t)[None, :]
    x[..., self.pad] = np.where(slots > (n + 1)[:, None], 1.0, 0.0)
    return x, mask


@dataclasses.dataclass(frozen=True)
class HALOVisits:
  """Patients as sparse HALO visits: entries `offsets[p]:offsets[p + 1]` are (slot, code) pairs."""
  offsets: np.ndarray     # int64 [P + 1]
  slot: np.ndarray        # int32 [N]: 2 + visit rank
  code: np.ndarray        # int32 [N]: HALO code index
  num_visits: np.ndarray  # int32 [P]: visits kept
  truncated: np.ndarray   # bool [P]: more visits than slots (no end bit)
  labels: np.ndarray      # bool [P, Lb]


def build_halo(meta: dict, seed: int = 0) -> HALO:
  """The model described by a run's `model.json`."""
  return HALO(meta["total_vocab"], meta["width"], meta["num_layers"], meta["num_heads"],
              meta["max_visits"], rngs=nnx.Rngs(seed))
