"""Batched beam search for recurrent decoders, one `lax.while_loop` under the caller's `jax.jit`.

Every prompt row keeps `beam_width` hypotheses. A hypothesis that has emitted EOS stays in the
beam with a frozen score (its only continuation is PAD at log-probability 0), so it competes with
the live ones until the end; the loop stops when every hypothesis of every row has finished or
`max_new` tokens have been generated. With width 1 this is greedy decoding exactly (`top_k` and
`argmax` both break ties towards the lower id).

The final pick among a row's hypotheses divides the summed log-probability by the GNMT length
penalty ((5 + length) / 6) ** alpha; alpha = 0 (the default) ranks by the raw sum.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from rltf_jax.data.vocab import EOS, PAD

NEG_INF = -1e30  # finite, so that NEG_INF + NEG_INF stays ordered and never becomes NaN

# step_fn(carry for B*K rows, token [B*K]) -> (next-token logits [B*K, V], carry)
StepFn = Callable[[Any, jax.Array], tuple[jax.Array, Any]]


def beam_search(step_fn: StepFn, carry: Any, logits_BxV: jax.Array, *, beam_width: int,
                max_new: int, banned_V: jax.Array | None = None,
                length_penalty: float | jax.Array = 0.0):
  """Decodes from prompt states.

  Args:
    step_fn: the decoder's one-token step over `B * beam_width` rows (row b * K + k is beam k of
      prompt b).
    carry: the decoder state after each prompt, leading axis B.
    logits_BxV: next-token logits after each prompt.
    beam_width, max_new: static; the output buffer has `max_new` tokens.
    banned_V: bool [V], tokens never generated (PAD, BOS, UNK); EOS must stay allowed.
    length_penalty: GNMT alpha for the final pick.

  Returns:
    tokens_BxT (int32, PAD after the end; EOS itself is not written), lengths_B (generated
    tokens before EOS) and scores_B (summed log-probabilities, EOS included when emitted).
  """
  batch, vocab = logits_BxV.shape
  k = beam_width
  if banned_V is None:
    banned_V = jnp.zeros(vocab, bool)
  banned_V = banned_V.at[PAD].set(True)

  def log_probs(logits):
    return jax.nn.log_softmax(jnp.where(banned_V, NEG_INF, logits.astype(jnp.float32)), axis=-1)

  # Only beam 0 is live at the start, so the first top-k picks k distinct tokens of one prompt.
  carry = jax.tree.map(lambda a: jnp.repeat(a, k, axis=0), carry)
  next_lp = jnp.repeat(log_probs(logits_BxV), k, axis=0).reshape(batch, k, vocab)
  scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF), (batch, 1))
  # A finished hypothesis continues with PAD only, at no cost.
  stay_V = jnp.full(vocab, NEG_INF).at[PAD].set(0.0)

  init = dict(t=jnp.int32(0), tokens=jnp.full((batch, k, max_new), PAD, jnp.int32),
              scores=scores, finished=jnp.zeros((batch, k), bool),
              lengths=jnp.zeros((batch, k), jnp.int32), next_lp=next_lp, carry=carry)

  def cond(s):
    return (s["t"] < max_new) & ~jnp.all(s["finished"])

  def body(s):
    lp = jnp.where(s["finished"][..., None], stay_V, s["next_lp"])
    cand = (s["scores"][..., None] + lp).reshape(batch, k * vocab)
    scores, flat = jax.lax.top_k(cand, k)
    beam, token = flat // vocab, (flat % vocab).astype(jnp.int32)
    take = lambda a: jnp.take_along_axis(a, beam.reshape(batch, k, *([1] * (a.ndim - 2))), axis=1)
    was_finished = take(s["finished"])
    tokens = take(s["tokens"])
    is_eos = ~was_finished & (token == EOS)
    write = ~was_finished & ~is_eos
    tokens = tokens.at[:, :, s["t"]].set(jnp.where(write, token, PAD))
    rows = (jnp.arange(batch)[:, None] * k + beam).reshape(-1)
    carry = jax.tree.map(lambda a: a[rows], s["carry"])
    logits, carry = step_fn(carry, jnp.where(write, token, EOS).reshape(-1))
    return dict(t=s["t"] + 1, tokens=tokens, scores=scores, finished=was_finished | is_eos,
                lengths=take(s["lengths"]) + write.astype(jnp.int32),
                next_lp=log_probs(logits).reshape(batch, k, vocab), carry=carry)

  s = jax.lax.while_loop(cond, body, init)
  norm = ((5.0 + s["lengths"].astype(jnp.float32)) / 6.0) ** length_penalty
  best = jnp.argmax(s["scores"] / norm, axis=1)
  pick = lambda a: jnp.take_along_axis(a, best.reshape(batch, 1, *([1] * (a.ndim - 2))), axis=1)[:, 0]
  return pick(s["tokens"]), pick(s["lengths"]), pick(s["scores"])


def greedy_search(step_fn: StepFn, carry: Any, logits_BxV: jax.Array, *, max_new: int,
                  banned_V: jax.Array | None = None):
  """Argmax decoding with the same conventions as `beam_search` (the reference for width 1)."""
  batch, vocab = logits_BxV.shape
  if banned_V is None:
    banned_V = jnp.zeros(vocab, bool)
  banned_V = banned_V.at[PAD].set(True)

  def cond(s):
    return (s["t"] < max_new) & ~jnp.all(s["finished"])

  def body(s):
    lp = jax.nn.log_softmax(jnp.where(banned_V, NEG_INF, s["logits"]), axis=-1)
    token = jnp.argmax(lp, axis=-1).astype(jnp.int32)
    is_eos = ~s["finished"] & (token == EOS)
    write = ~s["finished"] & ~is_eos
    score = s["scores"] + jnp.where(s["finished"], 0.0, jnp.take_along_axis(lp, token[:, None], 1)[:, 0])
    logits, carry = step_fn(s["carry"], jnp.where(write, token, EOS))
    return dict(t=s["t"] + 1, tokens=s["tokens"].at[:, s["t"]].set(jnp.where(write, token, PAD)),
                finished=s["finished"] | is_eos, lengths=s["lengths"] + write, scores=score,
                logits=logits.astype(jnp.float32), carry=carry)

  init = dict(t=jnp.int32(0), tokens=jnp.full((batch, max_new), PAD, jnp.int32),
              finished=jnp.zeros(batch, bool), lengths=jnp.zeros(batch, jnp.int32),
              scores=jnp.zeros(batch), logits=logits_BxV.astype(jnp.float32), carry=carry)
  s = jax.lax.while_loop(cond, body, init)
  return s["tokens"], s["lengths"], s["scores"]
