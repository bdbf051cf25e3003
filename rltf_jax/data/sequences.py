"""Patient events -> padded token arrays, the input of every sequence model.

One token per event: a patient's sequence is `[BOS] + events + [EOS]`, each token carrying its
event's visit index, age (years) and raw CMS place-of-service code. BOS carries the attributes of
the first event and EOS those of the last, so that the step into and out of a sequence never looks
like a new visit. Arrays are padded on the right with PAD (id 0) and zero attributes.

Everything here is numpy and vectorised over patients: encoding a batch is a few gathers.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import BOS, EOS, PAD, Vocabulary
from rltf_jax.errors import DataError


class TokenBatch(NamedTuple):
  """Per-token arrays, all [B, L]; a pytree, so it passes through `jax.jit` as is."""
  tokens: np.ndarray  # int32: token ids (PAD=0, BOS=1, EOS=2, UNK=3, codes from 4)
  visit: np.ndarray   # int32: 0-based visit index of the token's event
  age: np.ndarray     # float32: age in years at the token's visit
  pos: np.ndarray     # int32: raw CMS place-of-service code of the token's visit


def lengths(batch: TokenBatch) -> np.ndarray:
  """int32 [B]: number of non-PAD tokens per row (rows are right-padded)."""
  return (np.asarray(batch.tokens) != PAD).sum(-1).astype(np.int32)


def encode_patients(ds: PatientEvents, vocab: Vocabulary, patient_idx: Sequence[int] | np.ndarray,
                    max_len: int, *, window: str = "last", rng: np.random.Generator | None = None,
                    add_bos: bool = True, add_eos: bool = True) -> TokenBatch:
  """Encodes patients `patient_idx` of `ds` as a right-padded `TokenBatch` of width `max_len`.

  A sequence longer than `max_len` is cut to a window of `max_len` consecutive tokens:
  `window="last"` keeps BOS and the most recent events (and EOS), which is what a prompt or an
  evaluation needs; `window="random"` takes a uniformly placed window of the full token sequence
  (training; needs `rng`). `add_eos=False` encodes prompts, which the model continues.
  """
  if max_len < 1 + add_bos + add_eos:
    raise DataError(f"max_len={max_len} leaves no room for events")
  if window not in ("last", "random"):
    raise DataError(f"window must be 'last' or 'random', got {window!r}")
  if window == "random" and rng is None:
    raise DataError("window='random' needs an rng (np.random.Generator)")
  idx = np.asarray(patient_idx, np.int64).reshape(-1)
  n_events = ds.lengths[idx]                       # [B]
  first_ev = ds.offsets[idx]                       # [B]
  n_tokens = n_events + add_bos + add_eos          # full sequence length per row
  keep = np.minimum(n_tokens, max_len)             # tokens kept per row
  if window == "last":
    # Keep the head specials and the tail: tokens [0, add_bos) and [n - keep + add_bos, n).
    start = n_tokens - keep
  else:
    start = rng.integers(0, n_tokens - keep + 1)   # uniform window start, per row
  j = np.arange(max_len)[None, :]                  # [1, L]
  valid = j < keep[:, None]                        # [B, L]
  if window == "last":
    # Position j holds full-sequence token k: BOS stays at 0, the rest is shifted by `start`.
    k = np.where((j < add_bos), j, j + start[:, None])
  else:
    k = j + start[:, None]
  e = k - add_bos                                  # event index within the patient
  is_bos = valid & (k == 0) & bool(add_bos)
  is_eos = valid & (e == n_events[:, None]) & bool(add_eos)
  # Specials take their neighbour's attributes: BOS those of the first kept event, EOS (by the
  # clip below) those of the last event.
  e = np.where(is_bos, start[:, None], e)
  e_clip = np.clip(e, 0, np.maximum(n_events - 1, 0)[:, None])
  has_events = (n_events > 0)[:, None]
  flat = np.where(has_events, first_ev[:, None] + e_clip, 0)
  flat = np.minimum(flat, max(ds.num_events - 1, 0))
  code_tok = vocab.encode(ds) if ds.num_events else np.zeros(0, np.int32)

  def take(values, fill):
    if ds.num_events == 0:
      return np.full(valid.shape, fill, values.dtype)
    out = values[flat]
    return np.where(valid & has_events, out, fill)

  tokens = take(code_tok, PAD).astype(np.int32)
  tokens = np.where(is_bos, BOS, np.where(is_eos, EOS, tokens)).astype(np.int32)
  tokens = np.where(valid, tokens, PAD).astype(np.int32)
  visit = take(ds.visit, 0).astype(np.int32)
  age = take(ds.age, 0).astype(np.float32)
  pos = take(ds.pos, 0).astype(np.int32)
  return TokenBatch(tokens=tokens, visit=visit, age=age, pos=pos)


def pad_to(batch: TokenBatch, length: int) -> TokenBatch:
  """Right-pads (or cuts) every array of `batch` to `length` columns."""
  cur = batch.tokens.shape[1]
  if cur >= length:
    return TokenBatch(*(np.asarray(a)[:, :length] for a in batch))
  return TokenBatch(*(np.pad(np.asarray(a), ((0, 0), (0, length - cur))) for a in batch))


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n (the largest bucket if none is)."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  return int(max(buckets))
