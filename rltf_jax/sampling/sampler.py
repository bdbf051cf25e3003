"""Jitted ancestral sampling of events from the decoder, with a KV cache.

Layout. Prompts arrive right-padded (`TokenBatch`, lengths `prompt_len`) and are padded to one of a
few bucket widths, so only a handful of shapes ever compile. Inside the jitted function each row is
shifted right so that every prompt ENDS at the same column `Lp - 1` (left padding). Then all rows
write their next token to the same cache column, one `dynamic_update_slice` per layer, and the
prefill's last column is the last real prompt token of every row. The padding columns are PAD
tokens: the causal + padding mask hides them from every query, and rotary positions count from
each row's first real token, so a left-padded row computes exactly what it would unpadded.

Loop. One prefill over the prompts fills the cache (per layer [B, H, Lp + max_new, Dh], and the
rotary tables of the positions the new tokens will take, so no step computes a sine); a
`lax.while_loop` then samples an event from the last hidden state, feeds it back, and stops when
every row has emitted EOS or `max_new` events exist. An event is drawn in the decoder's order:
new-visit flag, then (for a new visit) place of service and day gap, then the code given those.

Controls. temperature, top_k and top_p are traced scalars, so changing them never recompiles
(temperature <= 0 means greedy; top_k <= 0 and top_p >= 1 switch the filters off, and a `lax.cond`
skips the sort entirely then). The same controls apply to every head, so top-k 1 or a temperature
near zero gives the greedy sequence of events. Draws use one uniform per head and row through the
inverse CDF (cheaper than Gumbel noise over the vocabulary; see `_inverse_cdf`); a seed fixes
the result.
PAD, BOS and UNK are never sampled; EOS is blocked for the first `min_new` steps.

Target forecasts (`target`, see `sample`). Given a set of target codes, each step also returns
q_t, the probability that the code drawn at that step is a target code (under the filtered
sampling distribution, given the attributes drawn for the event), and may (a) add a scalar bias to
the target codes' logits and (b) draw the code with the target codes masked out. Along a masked
path the probability that the true model writes a target in its first T events is exactly
1 - prod_t (1 - q_t) averaged over paths (each masked event's likelihood ratio to the unmasked
model is 1 - q_t; summing P(first target at t) over t telescopes), which is the low-variance
estimator the forecast evaluator uses (`rltf_jax.evaluation.forecast`).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rltf_jax.data.sequences import TokenBatch, bucket_length, pad_to
from rltf_jax.data.vocab import BOS, EOS, PAD, UNK
from rltf_jax.errors import DataError
from rltf_jax.models import decoder as dec

DEFAULT_BUCKETS = (16, 32, 64, 96, 128, 192, 256, 384, 512)
_BANNED = -1e30


class Cache(NamedTuple):
  k: tuple              # per layer f32 [B, H, S, Dh]
  v: tuple              # per layer f32 [B, H, S, Dh]
  prompt_mask: jax.Array  # bool [B, Lp]: real (non-padding) prompt columns
  prompt_len: jax.Array  # int32 [B]
  rope: tuple           # (sin, cos) f32 [B, 1, max_new, Dh / 2]: the rotary tables of the new tokens


def left_align(prompt: TokenBatch, prompt_len):
  """Moves each right-padded row so that it ends at the last column; also returns positions."""
  lp = prompt.tokens.shape[1]
  src = jnp.arange(lp)[None, :] - (lp - prompt_len)[:, None]
  valid = src >= 0
  srcc = jnp.clip(src, 0, lp - 1)
  move = lambda a: jnp.where(valid, jnp.take_along_axis(jnp.asarray(a), srcc, axis=1), 0).astype(a.dtype)
  return TokenBatch(*(move(a) for a in prompt)), jnp.where(valid, src, 0).astype(jnp.int32), valid


def prefill(graphdef, params, prompt: TokenBatch, prompt_len, max_new: int):
  """Runs the prompts once; returns (last hidden [B, D], cache with room for `max_new` tokens)."""
  model = nnx.merge(graphdef, params)
  left, positions, valid = left_align(prompt, prompt_len)
  # The rotary tables of every position the prompts and the new tokens take, computed once here
  # and read by the steps: left to XLA, each layer's fused rotation recomputes the sines and cosines
  # for every head (and the decode loop for every step), which on a CPU cost more than the rotation.
  new_positions = prompt_len[:, None] + jnp.arange(max_new, dtype=jnp.int32)[None]
  sin, cos = jax.lax.optimization_barrier(
      model.rope_tables(jnp.concatenate([positions, new_positions.astype(jnp.int32)], axis=1)))
  lp = positions.shape[1]
  h, ks, vs = model.hidden_and_kv(left, positions=positions, last_only=True,
                                  rope=(sin[:, :, :lp], cos[:, :, :lp]))
  pad = lambda a: tuple(jnp.pad(layer, ((0, 0), (0, 0), (0, max_new), (0, 0))) for layer in a)
  return h[:, -1], Cache(pad(ks), pad(vs), valid, prompt_len.astype(jnp.int32),
                         (sin[:, :, lp:], cos[:, :, lp:]))


def decode(graphdef, params, token: TokenBatch, cache: Cache, step):
  """Feeds token `step` (0-based count of generated tokens; `token` arrays are [B]) into the cache.

  Returns (hidden [B, D], updated cache)."""
  model = nnx.merge(graphdef, params)
  lp = cache.prompt_mask.shape[1]
  s = cache.k[0].shape[2]
  col = jnp.arange(s)
  prompt_part = jnp.pad(cache.prompt_mask, ((0, 0), (0, s - lp)))
  key_mask = prompt_part | ((col >= lp) & (col <= lp + step))[None, :]
  rope = tuple(jax.lax.dynamic_slice_in_dim(t, step, 1, axis=2) for t in cache.rope)  # position prompt_len + step
  tok = TokenBatch(*(jnp.asarray(a)[:, None] for a in token))
  h, k, v = model.decode_hidden(tok, rope, cache.k, cache.v, lp + step, key_mask)
  return h[:, 0], cache._replace(k=k, v=v)


def _pick(logits, u, temperature, top_k, top_p):
  """Draws one index per row of logits [B, K] with uniforms u [B] in (0, 1]."""
  # A cond, not a select between both: the argmax over the vocabulary costs about as much as the
  # draw itself, and only one of the two is ever wanted.
  return jax.lax.cond(temperature <= 0, lambda: jnp.argmax(logits, axis=-1).astype(jnp.int32),
                      lambda: _draw(logits, u, temperature, top_k, top_p))


def _draw(logits, u, temperature, top_k, top_p):
  """Ancestral draw from softmax(logits / temperature) after the top-k / top-p filters."""
  k_all = logits.shape[-1]
  x = logits / jnp.maximum(temperature, 1e-6)
  need = ((top_k > 0) & (top_k < k_all)) | (top_p < 1.0)
  x = jax.lax.cond(need, lambda x: _filtered(x, top_k, top_p), lambda x: x, x)
  return _inverse_cdf(jax.nn.softmax(x, axis=-1), u).astype(jnp.int32)


def _filtered(x, top_k, top_p):
  """Scaled logits with everything outside the top-k and the top-p nucleus set to -inf."""
  k_all = x.shape[-1]
  desc = -jnp.sort(-x, axis=-1)
  k = jnp.where((top_k <= 0) | (top_k > k_all), k_all, top_k)
  rank = jnp.arange(k_all)
  p = jax.nn.softmax(jnp.where(rank < k, desc, -jnp.inf), axis=-1)
  # Nucleus: keep the shortest prefix whose mass reaches top_p (always at least one entry).
  keep = ((jnp.cumsum(p, axis=-1) - p) < top_p) & (rank < k)
  n_keep = jnp.maximum(keep.sum(-1), 1)
  threshold = jnp.take_along_axis(desc, (n_keep - 1)[:, None], axis=-1)
  return jnp.where(x >= threshold, x, -jnp.inf)


def _draw_code_tracked(logits, u, controls, target):
  """As `_pick` for the code head (temperature > 0), with a target set: returns (code, q), q the
  target codes' share of the filtered sampling distribution after `bias` is added to their scaled
  logits; with `masked` the code is drawn from the rest (from everything where q = 1)."""
  temperature, top_k, top_p = controls
  target_V, bias, masked = target
  x = logits / jnp.maximum(temperature, 1e-6) + jnp.where(target_V[None, :], bias[:, None], 0.0)
  k_all = x.shape[-1]
  need = ((top_k > 0) & (top_k < k_all)) | (top_p < 1.0)
  x = jax.lax.cond(need, lambda x: _filtered(x, top_k, top_p), lambda x: x, x)
  p = jax.nn.softmax(x, axis=-1)
  q = jnp.where(target_V, p, 0.0).sum(-1)
  rest = jnp.where(masked & target_V, 0.0, p)
  rest = jnp.where((rest.sum(-1) > 0)[:, None], rest, p)
  return _inverse_cdf(rest, u).astype(jnp.int32), jnp.clip(q, 0.0, 1.0)


def _inverse_cdf(p, u):
  """First index whose cumulative probability (rows of p [B, K]) reaches u [B] in (0, 1].

  In two levels, blocks of about sqrt(K) entries and then the entries of the chosen block: a
  cumulative sum over the whole vocabulary is slow on a CPU (about 2.5 ms for 64 x 8000, most of
  a decode step's sampling time), two short ones are not. Only entries with p > 0 are chosen."""
  b, k_all = p.shape
  width = max(1, int(np.ceil(np.sqrt(k_all))))
  blocks = -(-k_all // width)
  p_BxNxW = jnp.pad(p, ((0, 0), (0, blocks * width - k_all))).reshape(b, blocks, width)
  mass_BxN = p_BxNxW.sum(-1)
  cdf_BxN = jnp.cumsum(mass_BxN, axis=-1)
  target = u * cdf_BxN[:, -1]
  block = jnp.clip((cdf_BxN < target[:, None]).sum(-1), 0, blocks - 1)
  # A block past the last one with mass (float rounding) falls back to the last with mass.
  last_nonempty = blocks - 1 - jnp.argmax((mass_BxN > 0)[:, ::-1], axis=-1)
  block = jnp.where(jnp.take_along_axis(mass_BxN, block[:, None], -1)[:, 0] > 0, block, last_nonempty)
  rows = jnp.arange(b)
  mass = mass_BxN[rows, block]
  # Where u falls inside the chosen block, as a fraction of its mass, kept in (0, 1] so that the
  # pick inside the block is an entry with p > 0 despite rounding.
  frac = (target - (cdf_BxN[rows, block] - mass)) / mass
  frac = jnp.clip(frac, 1e-7, 1.0)
  in_block = jnp.cumsum(p_BxNxW[rows, block], axis=-1)
  col = jnp.clip((in_block < (frac * in_block[:, -1])[:, None]).sum(-1), 0, width - 1)
  return jnp.minimum(block * width + col, k_all - 1)


class Last(NamedTuple):
  """Attributes of the last token of each row (what a new event is relative to)."""
  visit: jax.Array
  age: jax.Array
  pos: jax.Array


def _uniforms(key, step, b: int, rows: int | None, offset=0, total: int | None = None):
  """f32 [5, b] in (0, 1]: one per head and row. Rows padded for the devices: the draws are those
  of the `rows` real rows of the whole batch, and the padding up to `total` rows repeats row 0's,
  so the real rows get the numbers they get unpadded and the padding (a copy of row 0) ends when
  row 0 does. This call's `b` rows are rows [offset, offset + b) of the `total` (one process's
  share; all of them by default)."""
  total = total or b
  u = 1.0 - jax.random.uniform(jax.random.fold_in(key, step), (5, rows or b))
  if rows is not None and rows < total:
    u = jnp.concatenate([u, jnp.repeat(u[:, :1], total - rows, axis=1)], axis=1)
  if total > b:
    u = jax.lax.dynamic_slice_in_dim(u, offset, b, axis=1)
  return u


def _draw_event(model, h_BxD, last: Last, key, step, controls, min_new, after_bos, rows=None,
                offset=0, total=None, target=None):
  """One event per row: (token, visit, age, pos, gap_days, q), attributes first, then the code;
  q [B] is the target codes' probability at this step (`_draw_code_tracked`), zeros without a
  `target`.

  `after_bos` [B]: the previous token is BOS, which carries its next event's visit attributes by
  construction (see `sequences.py`), so that event stays in BOS's visit."""
  temperature, top_k, top_p = controls
  u = _uniforms(key, step, h_BxD.shape[0], rows, offset, total)
  attr = model.attribute_logits(h_BxD)
  new_visit = _pick(attr["new_visit"], u[0], temperature, top_k, top_p)
  new_visit = jnp.where(after_bos, 0, new_visit)
  pos_row = _pick(attr["pos"], u[1], temperature, top_k, top_p)
  gap = _pick(attr["gap"], u[2], temperature, top_k, top_p)
  lo = jnp.asarray(dec.GAP_EDGES, jnp.int32)[gap]
  hi = jnp.asarray(np.append(dec.GAP_EDGES[1:], dec.GAP_MAX_DAYS + 1), jnp.int32)[gap]
  # The day within the bucket is uniform; in greedy mode (the filters leave one choice) it is the
  # bucket's middle, so that greedy decoding is a deterministic function of the prompt.
  greedy = (temperature <= 1e-3) | (top_k == 1)
  within = jnp.where(greedy, 0.5, 1.0 - u[3])
  days = lo + jnp.floor(within * (hi - lo)).astype(jnp.int32)
  opens = new_visit == 1
  pos_row = jnp.where(opens, pos_row, dec.pos_rows(last.pos))
  days = jnp.where(opens, days, 0)
  gap = jnp.where(opens, dec.gap_bucket(days), 0)
  logits = model.code_logits(h_BxD, new_visit, pos_row, gap)
  banned = jnp.zeros(logits.shape[-1], bool).at[jnp.array([PAD, BOS, UNK])].set(True)
  logits = jnp.where(banned, _BANNED, logits)
  logits = jnp.where((step < min_new) & (jnp.arange(logits.shape[-1]) == EOS), _BANNED, logits)
  if target is None:
    code, q = _pick(logits, u[4], temperature, top_k, top_p), jnp.zeros(h_BxD.shape[0])
  else:
    code, q = _draw_code_tracked(logits, u[4], controls, target)
  return (code, last.visit + new_visit, last.age + days.astype(jnp.float32) / dec.DAYS_PER_YEAR,
          pos_row, days, q)


def _sample_impl(graphdef, params, prompt, prompt_len, temperature, top_k, top_p, min_new, key,
                 row_offset, target=None, *, max_new: int, rows: int | None = None,
                 total_rows: int | None = None):
  model = nnx.merge(graphdef, params)
  b, lp = prompt.tokens.shape
  controls = (temperature, top_k, top_p)
  h, cache = prefill(graphdef, params, prompt, prompt_len, max_new)
  last_col = lambda a: jnp.asarray(a)[jnp.arange(b), prompt_len - 1]
  last = Last(last_col(prompt.visit), last_col(prompt.age), last_col(prompt.pos))
  out = dict(tokens=jnp.zeros((b, max_new), jnp.int32), visit=jnp.zeros((b, max_new), jnp.int32),
             age=jnp.zeros((b, max_new), jnp.float32), pos=jnp.zeros((b, max_new), jnp.int32),
             gap_days=jnp.zeros((b, max_new), jnp.int32))
  if target is not None:
    out["target_mass"] = jnp.zeros((b, max_new), jnp.float32)

  def emit(step, h, last, done, out, num_new, after_bos):
    code, visit, age, pos, days, q = _draw_event(model, h, last, key, step, controls, min_new,
                                                 after_bos, rows, row_offset, total_rows, target)
    code = jnp.where(done, PAD, code)
    new = dict(tokens=code, visit=visit, age=age, pos=pos, gap_days=days)
    if target is not None:
      new["target_mass"] = q
    out = {k: out[k].at[:, step].set(jnp.where(done, jnp.zeros_like(v), v)) for k, v in new.items()}
    num_new = num_new + (~done & (code != EOS)).astype(jnp.int32)
    done = done | (code == EOS)
    keep = lambda new_v, old_v: jnp.where(done, old_v, new_v)
    return Last(keep(visit, last.visit), keep(age, last.age), keep(pos, last.pos)), done, out, num_new

  done0 = jnp.zeros(b, bool)
  last, done, out, num_new = emit(0, h, last, done0, out, jnp.zeros(b, jnp.int32),
                                 last_col(prompt.tokens) == BOS)

  def cond(carry):
    step, _, done, _, _, _ = carry
    return (step < max_new) & ~jnp.all(done)

  def body(carry):
    step, last, done, out, num_new, cache = carry
    prev = step - 1
    token = TokenBatch(out["tokens"][:, prev], last.visit, last.age, last.pos)
    h, cache = decode(graphdef, params, token, cache, prev)
    last, done, out, num_new = emit(step, h, last, done, out, num_new, jnp.zeros(b, bool))
    return step + 1, last, done, out, num_new, cache

  carry = (jnp.int32(1), last, done, out, num_new, cache)
  _, _, _, out, num_new, _ = jax.lax.while_loop(cond, body, carry)
  out["num_new"] = num_new
  return out


_sample_jit = jax.jit(_sample_impl, static_argnums=0, static_argnames=("max_new", "rows", "total_rows"))


def local_mesh() -> Mesh | None:
  """A ("data",) mesh over this process's devices; None with one device (nothing to split)."""
  devices = jax.local_devices()
  return Mesh(np.asarray(devices), ("data",)) if len(devices) > 1 else None


def pad_rows(arrays, multiple: int):
  """Arrays with a leading row axis, padded to a multiple of `multiple` rows by repeating row 0."""
  short = -len(arrays[0]) % multiple
  if not short:
    return tuple(arrays)
  return tuple(np.concatenate([a, np.repeat(a[:1], short, axis=0)]) for a in arrays)


def shard_rows(mesh: Mesh, arrays, params):
  """(arrays padded by `pad_rows` and split over "data", params whole on every device)."""
  rows = NamedSharding(mesh, P("data"))
  arrays = pad_rows(arrays, mesh.size)
  return (tuple(jax.device_put(a, rows) for a in arrays),
          jax.device_put(params, NamedSharding(mesh, P())))


def sample(graphdef, params, prompt: TokenBatch, prompt_len, *, max_new: int, temperature=1.0,
           top_k=0, top_p=1.0, seed=0, min_new=0, buckets: Sequence[int] = DEFAULT_BUCKETS,
           mesh: Mesh | None = None, target_mask=None, target_bias: float = 0.0,
           mask_target: bool = False):
  """Samples up to `max_new` events after each prompt.

  `target_mask` (bool [vocabulary size]: the target codes' tokens; optional): also return `target_mass` f32 [B, max_new], each step's
  probability of a target code (0 after EOS), with `target_bias` (a number, or one per row) added
  to the target codes' scaled logits and, with `mask_target`, the codes drawn with the targets masked out (module doc).
  Bias and masking are traced: changing them never recompiles. Without `target_mask` the
  function is the one it was without them (same program, same draws).

  `prompt` is right-padded; `prompt_len` int32 [B] (each >= 1: at least BOS). Returns numpy
  arrays: tokens, visit, age, pos (raw CMS code), gap_days (days since the previous event's
  visit), each [B, max_new], and num_new [B] (events before EOS; EOS, when emitted, sits at column
  num_new; columns after it are PAD). Same seed, same inputs: same result.

  With a `mesh` (`local_mesh`) the rows are split over its "data" axis, padded to a multiple of
  its devices and unpadded after; each row draws the random numbers it draws on one device, so
  the result is the same tokens as without a mesh. Of a multi-process job (`jax.distributed`),
  every process passes all the rows, generates its contiguous share of them on its own devices
  and returns all of them, gathered in row order: again the tokens of one process.
  """
  prompt_len = np.asarray(prompt_len, np.int32)
  if prompt_len.min(initial=1) < 1:
    raise DataError("every prompt needs at least one token (BOS)")
  longest = int(prompt_len.max(initial=1))
  width = bucket_length(longest, buckets)
  if longest > width:
    raise DataError(f"prompt of {longest} tokens exceeds the largest bucket {max(buckets)}; "
                    "encode prompts with a smaller max_len (the most recent events are kept)")
  prompt = pad_to(TokenBatch(*(np.asarray(a) for a in prompt)), width)
  b, rows, total, offset = len(prompt_len), None, None, 0
  arrays = (*prompt, prompt_len)
  if target_mask is not None:  # the bias is per row: it travels (is padded, split) with the rows
    arrays += (np.broadcast_to(np.asarray(target_bias, np.float32), (b,)).copy(),)
  processes = jax.process_count()
  if processes > 1:  # this process's share of the rows, padded so that every share is as long
    arrays = pad_rows(arrays, processes * jax.local_device_count())
    total = len(arrays[0])
    share = total // processes
    offset = jax.process_index() * share
    arrays, rows = tuple(a[offset:offset + share] for a in arrays), b
  if mesh is not None and mesh.size > 1:
    arrays, params = shard_rows(mesh, arrays, params)
    rows, total = b, total or len(arrays[0])
  target = None
  if target_mask is not None:
    if temperature <= 0:
      raise DataError("target forecasts need temperature > 0 (greedy decoding has no probabilities)")
    *arrays, bias_B = arrays
    target = (jnp.asarray(target_mask, bool), jnp.asarray(bias_B), jnp.bool_(mask_target))
  *columns, prompt_len = arrays
  out = _sample_jit(graphdef, params, TokenBatch(*columns), prompt_len, jnp.float32(temperature),
                    jnp.int32(top_k), jnp.float32(top_p), jnp.int32(min_new), jax.random.key(seed),
                    jnp.int32(offset), target, max_new=int(max_new), rows=rows, total_rows=total)
  out = jax.device_get(out)
  if processes > 1:
    from jax.experimental import multihost_utils
    out = multihost_utils.process_allgather(out, tiled=True)  # the shares, in process order
  return {k: np.asarray(v)[:b] for k, v in out.items()}
