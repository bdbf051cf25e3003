"""The packed preference-pair layout: one row per pair, its attention mask, and its log-probabilities.

The one place that knows the layout (below): `pack_pairs` writes it, `attention_mask` and
`pair_logps` read it, and `bucketed_batch` cuts rows of it into few distinct shapes. DPO, the
reference pass, SFT and the benchmark all use these.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rltf_jax.data.events import PatientEvents
from rltf_jax.data.sequences import TokenBatch, pow2_length
from rltf_jax.data.vocab import BOS, EOS
from rltf_jax.errors import DataError
from rltf_jax.models import masks
from rltf_jax.models.decoder import next_attributes
from rltf_jax.training.preference import PreferenceData


# ---------------------------------------------------------------------------- packed layout
# Chosen and rejected share the prompt and agree up to the edit index e, so one row holds a pair:
# the shared part once, then the two tails, each tail attending only to the shared part and to
# itself (`segment`), with positions restarting after the shared part for the rejected tail:
#
#   column    0    1 .. p      p+1 .. p+e  | p+e+1 .. p+e+a    | p+e+a+1 .. p+e+a+b  | pad
#   token     BOS  prompt      chosen[:e]  | chosen[e:] (EOS)  | rejected[e:] (EOS)  | PAD
#   segment   1    1           1           | 2                 | 3                   | 0
#   position  0    1 .. p      p+1 .. p+e  | p+e+1 .. p+e+a    | p+e+1 .. p+e+b      | 0
#
# Query i may attend key j iff j <= i and (segment[j] == 1 or segment[j] == segment[i]), so row
# columns compute exactly what two ordinary causal passes over [BOS prompt chosen (EOS)] and
# [BOS prompt rejected (EOS)] compute, with the shared part computed once. Scored tokens are the
# continuation's (chosen[:e] once, counted for both), each predicted from its `target_parent`
# column: the previous column, except the first rejected-tail token, predicted from the last
# shared column. BOS carries the attributes of its sequence's first event (the prompt's first, or
# the continuation's when the prompt is empty), EOS those of its own sequence's last event, as
# `rltf_jax.data.sequences` encodes sequences.
#
# Own BOS: when the prompt is empty and the two continuations' first events differ in visit, age or
# place of service (a record that starts with the target: the rejected one, target removed, starts
# with the next event), the two BOS tokens differ, so nothing is shared and each tail holds its own:
#
#   column    0    1 .. a               | a+1  a+2 .. a+b+1       | pad
#   token     BOS  chosen (EOS)         | BOS  rejected (EOS)     | PAD
#   segment   2    2                    | 3    3                  | 0
#   position  0    1 .. a               | 0    1 .. b             | 0
#
# (a, b: continuation tokens with EOS). Every scored token is then predicted from the previous
# column, and the rejected BOS (column a+1) is not scored. An empty rejected continuation takes the
# chosen one's first event on BOS, as its EOS does, so it shares BOS.
SEG_PAD, SEG_SHARED, SEG_CHOSEN, SEG_REJECTED = 0, 1, 2, 3


class PackedPairs(NamedTuple):
  """Pairs packed one per row (numpy; rows are pairs). Widths are padded to multiples of 8."""
  tokens: np.ndarray         # int32 [N, W]
  visit: np.ndarray          # int32 [N, W]
  age: np.ndarray            # float32 [N, W]
  pos: np.ndarray            # int32 [N, W]
  positions: np.ndarray      # int32 [N, W]: position ids for the positional encoding
  segment: np.ndarray        # int32 [N, W]: SEG_* per column
  target_parent: np.ndarray  # int32 [N, T]: column whose hidden state predicts the target
  target_token: np.ndarray   # int32 [N, T]: the scored token (PAD where unused)
  target_col: np.ndarray     # int32 [N, T]: the target's own column (its attributes)
  target_segment: np.ndarray  # int32 [N, T]: SEG_* of the target (SEG_PAD where unused)


def _round_up(n: int, m: int = 8) -> int:
  return max(m, -(-int(n) // m) * m)


def pack_pairs(data: PreferenceData, vocab, width: int | None = None,
               num_targets: int | None = None) -> PackedPairs:
  """Packs every pair into one row (layout above); `width`/`num_targets` fix the padded sizes."""
  n = data.num_pairs
  prompt, chosen, rejected = data.prompt, data.chosen, data.rejected
  lp, lc, lr = prompt.lengths, chosen.lengths, rejected.lengths
  e, eos = data.edit_index, data.ends.astype(np.int64)
  has_prompt = lp > 0
  # Own BOS (layout above): empty prompt, and the continuations' first events differ in attributes.
  first_c = chosen.offsets[:-1]
  first_r = np.minimum(rejected.offsets[:-1], max(rejected.num_events - 1, 0))
  own = ~has_prompt & (lr > 0) & (lc > 0)
  if own.any():
    differ = lambda a, b: a[first_c[own]] != b[first_r[own]]
    own[own] = (differ(chosen.visit, rejected.visit) | differ(chosen.age, rejected.age)
                | differ(chosen.pos, rejected.pos))
  own_i = own.astype(np.int64)
  n_shared = np.where(own, 0, 1 + lp + e)
  n_ctail = lc - e + eos + own_i
  n_rtail = lr - e + eos + own_i
  row_len = n_shared + n_ctail + n_rtail
  n_targets = row_len - 1 - lp - own_i
  w = _round_up(row_len.max()) if width is None else width
  t = _round_up(n_targets.max()) if num_targets is None else num_targets
  if row_len.max() > w or n_targets.max() > t:
    raise DataError(f"packed pairs need width {row_len.max()} and {n_targets.max()} targets; "
                    f"got {w} and {t}")

  out = dict(tokens=np.zeros((n, w), np.int32), visit=np.zeros((n, w), np.int32),
             age=np.zeros((n, w), np.float32), pos=np.zeros((n, w), np.int32))

  def put(ev: PatientEvents, rows, src, cols, token=None):
    """Writes events `src` of `ev` (or `token` with their attributes) at (rows, cols)."""
    out["tokens"][rows, cols] = vocab.encode(ev)[src] if token is None else token
    out["visit"][rows, cols] = ev.visit[src]
    out["age"][rows, cols] = ev.age[src]
    out["pos"][rows, cols] = ev.pos[src]

  def span(ev: PatientEvents, first, count, col0):
    """Events first..first+count-1 of each row of `ev`, placed from column col0 on."""
    rows = np.repeat(np.arange(n), count)
    within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    return rows, ev.offsets[:-1][rows] + np.repeat(first, count) + within, np.repeat(col0, count) + within

  put(prompt, *span(prompt, np.zeros(n, np.int64), lp, np.ones(n, np.int64)))
  put(chosen, *span(chosen, np.zeros(n, np.int64), lc, 1 + lp))
  put(rejected, *span(rejected, e, lr - e, n_shared + n_ctail + own_i))
  rows = np.arange(n)
  # BOS: the first event of prompt + chosen. Every pair has at least one event in one of them.
  bos_src = np.where(has_prompt, prompt.offsets[:-1], chosen.offsets[:-1])
  for ev, sel in ((prompt, has_prompt), (chosen, ~has_prompt)):
    put(ev, rows[sel], bos_src[sel], 0, token=BOS)
  # The rejected tail's own BOS, with the rejected continuation's first event.
  put(rejected, rows[own], first_r[own], n_ctail[own], token=BOS)
  # EOS: the last event of its own sequence (continuation, else prompt, else the chosen one's).
  end = np.flatnonzero(data.ends)
  for ev, tail_col, fallbacks in ((chosen, n_shared + n_ctail - 1, (prompt,)),
                                  (rejected, row_len - 1, (prompt, chosen))):
    done = np.zeros(n, bool)
    for src_ev in (ev,) + fallbacks:
      sel = end[~done[end] & (src_ev.lengths[end] > 0)]
      put(src_ev, sel, src_ev.offsets[1:][sel] - 1, tail_col[sel], token=EOS)
      done[sel] = True

  col = np.arange(w)[None, :]
  shared_end, chosen_end = n_shared[:, None], (n_shared + n_ctail)[:, None]
  segment = np.select([col < shared_end, col < chosen_end, col < row_len[:, None]],
                      [SEG_SHARED, SEG_CHOSEN, SEG_REJECTED], SEG_PAD).astype(np.int32)
  positions = np.where(segment == SEG_REJECTED, col - n_ctail[:, None],
                       np.where(segment == SEG_PAD, 0, col)).astype(np.int32)

  k = np.arange(t)[None, :]
  used = k < n_targets[:, None]
  # Own-BOS rows skip the rejected BOS column (target k >= a sits one column further right).
  skip = own[:, None] & (k >= (n_ctail - 1)[:, None])
  target_col = np.where(used, 1 + lp[:, None] + k + skip, 0)
  first_rejected = ~own[:, None] & (k == (e + n_ctail)[:, None])
  target_parent = np.where(first_rejected, shared_end - 1, np.maximum(target_col - 1, 0))
  target_segment = np.where(used, np.take_along_axis(segment, target_col, 1), SEG_PAD)
  target_token = np.where(used, np.take_along_axis(out["tokens"], target_col, 1), 0)
  return PackedPairs(**out, positions=positions, segment=segment,
                     target_parent=target_parent.astype(np.int32),
                     target_token=target_token.astype(np.int32),
                     target_col=target_col.astype(np.int32),
                     target_segment=target_segment.astype(np.int32))


# ---------------------------------------------------------------------------- reading rows
def attention_mask(segment_BxW):
  """bool [B, W, W]: query i sees key j <= i in the shared part or in its own tail."""
  return masks.shared_prefix(segment_BxW, shared=SEG_SHARED, pad=SEG_PAD)


def pair_logps(graphdef, params, packed: PackedPairs):
  """(log pi(C|P), log pi(R|P)), each f32 [B], from one pass over packed rows."""
  model = nnx.merge(graphdef, params)
  row = TokenBatch(packed.tokens, packed.visit, packed.age, packed.pos)
  hidden_BxWxD = model.hidden(row, positions=packed.positions,
                              attention_mask=attention_mask(packed.segment))
  take = lambda a, idx: jnp.take_along_axis(a, idx, axis=1)
  parent, col = packed.target_parent, packed.target_col
  hidden_BxTxD = take(hidden_BxWxD, parent[..., None])
  current = TokenBatch(*(take(a, parent) for a in row))
  target = TokenBatch(packed.target_token, *(take(a, col) for a in row[1:]))
  attrs = next_attributes(current, target)
  logp_BxT = model.code_logprob(hidden_BxTxD, attrs.new_visit, attrs.pos_row, attrs.gap,
                                packed.target_token)
  seg = packed.target_segment
  chosen = jnp.where((seg == SEG_SHARED) | (seg == SEG_CHOSEN), logp_BxT, 0.0).sum(-1)
  rejected = jnp.where((seg == SEG_SHARED) | (seg == SEG_REJECTED), logp_BxT, 0.0).sum(-1)
  return chosen, rejected


def row_shapes(packed: PackedPairs) -> tuple[np.ndarray, np.ndarray]:
  """Columns and scored targets each row really uses (int64 [N] each)."""
  width = (packed.segment != 0).sum(1)
  targets = (packed.target_segment != 0).sum(1)
  return width, targets


def slice_batch(packed: PackedPairs, idx: np.ndarray, width: int, targets: int) -> PackedPairs:
  """Rows `idx`, cut to `width` columns and `targets` targets (rows are left-aligned)."""
  cols = ("tokens", "visit", "age", "pos", "positions", "segment")
  return PackedPairs(*(a[idx][:, :width] if name in cols else a[idx][:, :targets]
                       for name, a in zip(PackedPairs._fields, packed)))


def bucketed_batch(packed: PackedPairs, rows: np.ndarray, shapes, fit: np.ndarray | None = None
                   ) -> PackedPairs:
  """Rows `rows`, cut to the power-of-two width and target count (from 64) that hold the rows
  `fit` (default `rows`), given `shapes` = `row_shapes(packed)`: few distinct shapes, so a jitted
  step compiles once per bucket."""
  width, targets = shapes
  fit = rows if fit is None else fit
  return slice_batch(packed, rows, pow2_length(width[fit].max(), 64, packed.tokens.shape[1]),
                     pow2_length(targets[fit].max(), 64, packed.target_token.shape[1]))
