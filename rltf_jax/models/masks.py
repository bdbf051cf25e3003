"""Every attention mask the project builds: bool [B, Q, K], True where query i may attend key j.

One place, so that the three layouts (plain sequences, packed pretraining rows, packed preference
pairs) agree on what "causal" means and how padding is hidden.
"""

from __future__ import annotations

import jax.numpy as jnp


def _causal(length: int):
  return jnp.tril(jnp.ones((length, length), bool))[None]


def causal_padding(tokens_BxL, pad_token: int):
  """Plain sequences: query i sees key j <= i whose token is not PAD."""
  return _causal(tokens_BxL.shape[1]) & (tokens_BxL != pad_token)[:, None, :]


def segments(segment_BxL):
  """Packed rows (several patients per row): key j <= i of the query's own segment; segment 0
  (PAD) is seen by nobody."""
  seg_q, seg_k = segment_BxL[:, :, None], segment_BxL[:, None, :]
  return _causal(segment_BxL.shape[1]) & (seg_k == seg_q) & (seg_k != 0)


def shared_prefix(segment_BxW, *, shared: int, pad: int):
  """Preference pairs (`rltf_jax.training.pairs`): key j <= i in the shared part (segment
  `shared`) or in the query's own tail; `pad` columns are seen by nobody."""
  seg_q, seg_k = segment_BxW[:, :, None], segment_BxW[:, None, :]
  return _causal(segment_BxW.shape[1]) & (seg_k != pad) & ((seg_k == shared) | (seg_k == seg_q))
