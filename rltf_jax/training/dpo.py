"""DPO-Positive fine-tuning of the base decoder on one cohort's preference pairs.

Loss (method.md), with d_C = log pi(C|P) - log ref(C|P), d_R = log pi(R|P) - log ref(R|P) and the
positive penalty q = max(0, log ref(C|P) - log pi(C|P)):

  placement "outside" (the paper's text):  -log sigmoid(beta * (d_C - d_R)) + lambda * q
  placement "inside"  (Smaug's form):      -log sigmoid(beta * (d_C - d_R - lambda * q))

lambda = 0 is plain sigmoid DPO in both. Log-probabilities are sums of code log-probabilities
(`Decoder.code_logits`, conditioned on each event's visit/place/gap attributes as in pretraining)
over the continuation tokens only, EOS included when the continuation reaches the record's end;
the attribute heads are not scored. The reference log-probabilities are computed once per pair
set and cached (`rltf_jax.training.reference`); the reference model never runs during training.

Speed: a pair is one packed row (layout in `preference.pack_pairs`): the prompt and the shared
part of the continuations run once, and code logits ([.., V], the largest activation) are computed
only at the scored positions, gathered from the hidden states.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rltf_jax.data.sequences import TokenBatch
from rltf_jax.errors import ConfigError
from rltf_jax.training.preference import (SEG_CHOSEN, SEG_PAD, SEG_REJECTED, SEG_SHARED,
                                          PackedPairs)

PLACEMENTS = ("outside", "inside")


# ---------------------------------------------------------------------------- loss
def dpo_positive_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
                      lam: float, placement: str = "outside"):
  """(mean loss, metrics) of DPO-Positive over f32 [B] sequence log-probabilities.

  The reference values are constants: no gradient reaches them.
  """
  if placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {placement!r}")
  ref_chosen = jax.lax.stop_gradient(ref_chosen)
  ref_rejected = jax.lax.stop_gradient(ref_rejected)
  chosen_delta = policy_chosen - ref_chosen
  rejected_delta = policy_rejected - ref_rejected
  penalty = jnp.maximum(0.0, ref_chosen - policy_chosen)
  if placement == "outside":
    losses = -jax.nn.log_sigmoid(beta * (chosen_delta - rejected_delta)) + lam * penalty
  else:
    losses = -jax.nn.log_sigmoid(beta * (chosen_delta - rejected_delta - lam * penalty))
  metrics = dict(
      loss=losses.mean(),
      reward_margin=(beta * (chosen_delta - rejected_delta)).mean(),
      reward_accuracy=(chosen_delta > rejected_delta).mean(),
      reward_chosen=(beta * chosen_delta).mean(),
      reward_rejected=(beta * rejected_delta).mean(),
      logp_chosen=policy_chosen.mean(),
      logp_rejected=policy_rejected.mean(),
      penalty=penalty.mean())
  return losses.mean(), metrics


# ---------------------------------------------------------------------------- packed forward
def packed_attention_mask(segment_BxW):
  """bool [B, W, W]: query i sees key j <= i in the shared part or in its own tail."""
  w = segment_BxW.shape[1]
  causal = jnp.tril(jnp.ones((w, w), bool))[None]
  seg_q, seg_k = segment_BxW[:, :, None], segment_BxW[:, None, :]
  return causal & (seg_k != SEG_PAD) & ((seg_k == SEG_SHARED) | (seg_k == seg_q))


def pair_logps(graphdef, params, packed: PackedPairs):
  """(log pi(C|P), log pi(R|P)), each f32 [B], from one pass over packed rows."""
  from rltf_jax.models.decoder import next_attributes
  model = nnx.merge(graphdef, params)
  row = TokenBatch(packed.tokens, packed.visit, packed.age, packed.pos)
  hidden_BxWxD = model.hidden(row, positions=packed.positions,
                              attention_mask=packed_attention_mask(packed.segment))
  take = lambda a, idx: jnp.take_along_axis(a, idx, axis=1)
  parent, col = packed.target_parent, packed.target_col
  hidden_BxTxD = take(hidden_BxWxD, parent[..., None])
  current = TokenBatch(*(take(a, parent) for a in row))
  target = TokenBatch(packed.target_token, *(take(a, col) for a in row[1:]))
  attrs = next_attributes(current, target)
  logits_BxTxV = model.code_logits(hidden_BxTxD, attrs.new_visit, attrs.pos_row, attrs.gap)
  logits_BxTxV = logits_BxTxV.astype(jnp.float32)
  picked = jnp.take_along_axis(logits_BxTxV, packed.target_token[..., None], axis=-1)[..., 0]
  logp_BxT = picked - jax.nn.logsumexp(logits_BxTxV, axis=-1)
  seg = packed.target_segment
  chosen = jnp.where((seg == SEG_SHARED) | (seg == SEG_CHOSEN), logp_BxT, 0.0).sum(-1)
  rejected = jnp.where((seg == SEG_SHARED) | (seg == SEG_REJECTED), logp_BxT, 0.0).sum(-1)
  return chosen, rejected


# ---------------------------------------------------------------------------- train step
def make_train_step(graphdef, optimizer, *, beta: float, lam: float, placement: str):
  """A jitted `(params, opt_state, packed, ref_chosen, ref_rejected) -> (params, opt_state, metrics)`.

  `params` and `opt_state` are donated; `beta` and `lam` are traced constants of the closure.
  """
  if placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {placement!r}")

  def loss_fn(params, packed, ref_chosen, ref_rejected):
    chosen, rejected = pair_logps(graphdef, params, packed)
    return dpo_positive_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, lam=lam,
                             placement=placement)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def step(params, opt_state, packed, ref_chosen, ref_rejected):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, packed, ref_chosen,
                                                                     ref_rejected)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    metrics["grad_norm"] = _global_norm(grads)
    return params, opt_state, metrics

  return step


def _global_norm(tree) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def batch_rows(packed: PackedPairs, idx: np.ndarray) -> PackedPairs:
  return PackedPairs(*(a[idx] for a in packed))
