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
                    starts: np.ndarray | None = None, add_bos: bool = True,
                    add_eos: bool = True) -> TokenBatch:
  """Encodes patients `patient_idx` of `ds` as a right-padded `TokenBatch` of width `max_len`.

  A sequence longer than `max_len` is cut to a window of `max_len` consecutive tokens:
  `window="last"` keeps BOS and the most recent events (and EOS), which is what a prompt or an
  evaluation needs; `window="random"` takes a uniformly placed window of the full token sequence
  (training; needs `rng`, or `starts` from `window_starts`: a process encoding its share of a
  batch whose windows were drawn for every row). `add_eos=False` encodes prompts, which the model
  continues.
  """
  if max_len < 1 + add_bos + add_eos:
    raise DataError(f"max_len={max_len} leaves no room for events")
  if window not in ("last", "random"):
    raise DataError(f"window must be 'last' or 'random', got {window!r}")
  if window == "random" and rng is None and starts is None:
    raise DataError("window='random' needs an rng (np.random.Generator) or the window starts")
  idx = np.asarray(patient_idx, np.int64).reshape(-1)
  n_events = ds.lengths[idx]                       # [B]
  first_ev = ds.offsets[idx]                       # [B]
  n_tokens = n_events + add_bos + add_eos          # full sequence length per row
  keep = np.minimum(n_tokens, max_len)             # tokens kept per row
  if window == "last":
    # Keep the head specials and the tail: tokens [0, add_bos) and [n - keep + add_bos, n).
    start = n_tokens - keep
  else:
    start = (window_starts(ds, idx, max_len, rng, add_bos=add_bos, add_eos=add_eos)
             if starts is None else np.asarray(starts, np.int64))
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
  code_tok = vocab.lookup_table(ds.codes)  # code-table index -> token id; gathered per row below

  def take(values, fill):
    if ds.num_events == 0:
      return np.full(valid.shape, fill, values.dtype)
    out = values[flat]
    return np.where(valid & has_events, out, fill)

  tokens = code_tok[take(ds.code, 0)] if len(code_tok) else np.full(valid.shape, PAD, np.int32)
  tokens = np.where(valid & has_events, tokens, PAD)
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


def pow2_length(n: int, smallest: int = 16, limit: int | None = None) -> int:
  """The smallest power of two times `smallest` that holds n (capped at `limit`): batch widths
  from a handful of shapes, so a jitted function compiles once per shape."""
  b = smallest
  while b < n:
    b *= 2
  return b if limit is None else min(b, limit)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n (the largest bucket if none is)."""
  for b in sorted(buckets):
    if n <= b:
      return int(b)
  return int(max(buckets))


# ---------------------------------------------------------------------------- packing
class PackedBatch(NamedTuple):
  """Several sequences per row, each its own segment; all arrays [B, L].

  A segment is one patient's `[BOS] + events + [EOS]` (or a window of it): its `positions` restart
  at 0, its tokens attend only within the segment, and its last token predicts nothing (the next
  segment's BOS is not its continuation). See `rltf_jax.training.pretrain.packed_logprobs`."""
  tokens: np.ndarray     # int32, as TokenBatch
  visit: np.ndarray      # int32
  age: np.ndarray        # float32
  pos: np.ndarray        # int32
  segment: np.ndarray    # int32: 1, 2, ... per sequence within the row; 0 on PAD
  positions: np.ndarray  # int32: index of the token within its own sequence


def plan_packing(n_tokens: np.ndarray, row_len: int, open_rows: int = 32) -> tuple[np.ndarray, np.ndarray, int]:
  """Places sequences of `n_tokens` (each <= row_len) into rows of `row_len`, in the given order.

  First fit over the `open_rows` most recently opened rows (a row leaves the pool when a newer one
  would make it too large), so rows fill almost completely without reordering the sequences much.
  Returns (row index, column offset) per sequence and the number of rows; rows are numbered in
  the order they were opened."""
  n_tokens = np.asarray(n_tokens, np.int64)
  if len(n_tokens) and (n_tokens.max() > row_len or n_tokens.min() < 1):
    raise DataError(f"sequence lengths must be in 1..{row_len} to be packed, got {n_tokens.min()}..{n_tokens.max()}")
  row = np.empty(len(n_tokens), np.int64)
  offset = np.empty(len(n_tokens), np.int64)
  pool_ids, pool_used = [], []  # the open rows, oldest first
  num_rows = 0
  for i, n in enumerate(n_tokens.tolist()):
    for j, used in enumerate(pool_used):
      if used + n <= row_len:
        break
    else:
      if len(pool_ids) == open_rows:
        del pool_ids[0], pool_used[0]
      pool_ids.append(num_rows)
      pool_used.append(0)
      num_rows += 1
      j = len(pool_ids) - 1
    row[i], offset[i] = pool_ids[j], pool_used[j]
    pool_used[j] += n
  return row, offset, num_rows


def window_starts(ds: PatientEvents, patient_idx: np.ndarray, max_len: int, rng: np.random.Generator,
                  *, add_bos: bool = True, add_eos: bool = True) -> np.ndarray:
  """The start, in each patient's full token sequence, of a uniformly placed window of at most
  `max_len` tokens (`encode_patients`' `window="random"`), one draw per patient in order."""
  idx = np.asarray(patient_idx, np.int64).reshape(-1)
  n_tokens = ds.lengths[idx] + add_bos + add_eos
  return rng.integers(0, n_tokens - np.minimum(n_tokens, max_len) + 1)


def encode_packed(ds: PatientEvents, vocab: Vocabulary, patient_idx: Sequence[int] | np.ndarray,
                  row: np.ndarray, offset: np.ndarray, num_rows: int, row_len: int, *,
                  window: str = "last", rng: np.random.Generator | None = None,
                  starts: np.ndarray | None = None) -> PackedBatch:
  """Encodes patients (as `encode_patients`, each cut to at most `row_len` tokens) into `num_rows`
  rows, patient i at columns offset[i]: of row[i] (a plan from `plan_packing`)."""
  idx = np.asarray(patient_idx, np.int64).reshape(-1)
  row, offset = np.asarray(row, np.int64), np.asarray(offset, np.int64)
  one = encode_patients(ds, vocab, idx, row_len, window=window, rng=rng, starts=starts)
  keep = lengths(one)
  if len(idx) and ((offset + keep).max() > row_len or row.max() >= num_rows or row.min() < 0):
    raise DataError("packing plan does not fit the rows (lengths changed since planning?)")
  # Source (patient, column) and destination (row, column) of every kept token.
  src_p = np.repeat(np.arange(len(idx)), keep)
  src_c = np.arange(len(src_p)) - np.repeat(np.cumsum(keep) - keep, keep)
  dst_r, dst_c = row[src_p], offset[src_p] + src_c
  # Segment ids count the sequences of each row from 1, in column order.
  order = np.lexsort((offset, row))
  seg_of = np.empty(len(idx), np.int32)
  first_of_row = np.r_[True, row[order][1:] != row[order][:-1]] if len(idx) else np.zeros(0, bool)
  run_start = np.maximum.accumulate(np.where(first_of_row, np.arange(len(idx)), 0)) if len(idx) else first_of_row
  seg_of[order] = np.arange(len(idx)) - run_start + 1

  def place(values, dtype, src=None):
    out = np.zeros((num_rows, row_len), dtype)
    out[dst_r, dst_c] = values[src_p, src_c] if src is None else src
    return out

  return PackedBatch(tokens=place(one.tokens, np.int32), visit=place(one.visit, np.int32),
                     age=place(one.age, np.float32), pos=place(one.pos, np.int32),
                     segment=place(None, np.int32, seg_of[src_p]), positions=place(None, np.int32, src_c))
