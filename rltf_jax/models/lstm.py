"""The paper's LSTM baseline: a stacked LSTM language model over code tokens.

One token per event, as in the decoder's sequences: [BOS] code_1 ... code_L [EOS]. The paper gives
embedding 128, hidden 256 and 3 layers (`cfg.lstm`). The model sees codes only, no visit, age or
place of service; `rltf_jax.sampling.baseline_generators` documents how generated events get them.

The recurrence is written as a per-step function over an explicit carry so that training (a
`lax.scan` over time), prompt prefill and beam search share one cell.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# carry: per layer (c_BxH, h_BxH)
Carry = tuple[tuple[jax.Array, jax.Array], ...]


class LSTMCell(nnx.Module):
  """One LSTM layer; the four gates come from one fused matmul over [x, h]."""

  def __init__(self, in_dim: int, hidden_dim: int, *, rngs: nnx.Rngs):
    self.hidden_dim = hidden_dim
    self.gates = nnx.Linear(in_dim + hidden_dim, 4 * hidden_dim, rngs=rngs)
    # Forget-gate bias 1: the usual start that lets gradients flow through long histories.
    bias = jnp.zeros(4 * hidden_dim).at[hidden_dim:2 * hidden_dim].set(1.0)
    self.gates.bias.value = bias

  def __call__(self, carry, x_BxD):
    c, h = carry
    z = self.gates(jnp.concatenate([x_BxD, h], axis=-1))
    i, f, g, o = jnp.split(z, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (c, h), h


class LSTMLM(nnx.Module):
  """Embedding -> `num_layers` LSTM layers -> vocabulary logits."""

  def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, num_layers: int, *,
               rngs: nnx.Rngs):
    self.vocab_size = vocab_size
    self.hidden_dim = hidden_dim
    self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
    self.cells = nnx.List([LSTMCell(embed_dim if i == 0 else hidden_dim, hidden_dim, rngs=rngs)
                           for i in range(num_layers)])
    self.out = nnx.Linear(hidden_dim, vocab_size, rngs=rngs)

  def init_carry(self, batch: int) -> Carry:
    z = jnp.zeros((batch, self.hidden_dim), jnp.float32)
    return tuple((z, z) for _ in self.cells)

  def step(self, carry: Carry, token_B: jax.Array) -> tuple[jax.Array, Carry]:
    """Reads one token per row; returns the next-token logits [B, V] and the new carry."""
    x = self.embed(token_B)
    new = []
    for cell, layer_carry in zip(self.cells, carry):
      layer_carry, x = cell(layer_carry, x)
      new.append(layer_carry)
    return self.out(x), tuple(new)

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    """Teacher-forced logits [B, L, V]: position t predicts token t + 1."""
    def body(carry, token_B):
      logits, carry = self.step(carry, token_B)
      return carry, logits
    _, logits_LxBxV = jax.lax.scan(body, self.init_carry(tokens_BxL.shape[0]), tokens_BxL.T)
    return logits_LxBxV.transpose(1, 0, 2)

  def prefill(self, tokens_BxL: jax.Array, valid_BxL: jax.Array) -> tuple[jax.Array, Carry]:
    """Runs left-padded prompts; invalid (padding) steps leave the carry unchanged.

    Returns the logits after each row's last valid token and the carry there.
    """
    batch = tokens_BxL.shape[0]

    def body(state, inputs):
      carry, last = state
      token_B, valid_B = inputs
      logits, new = self.step(carry, token_B)
      keep = lambda a, b: jnp.where(valid_B[:, None], a, b)
      carry = jax.tree.map(keep, new, carry)
      return (carry, keep(logits, last)), None

    init = (self.init_carry(batch), jnp.zeros((batch, self.vocab_size), jnp.float32))
    (carry, logits), _ = jax.lax.scan(body, init, (tokens_BxL.T, valid_BxL.T))
    return logits, carry


def build_lstm(meta: dict, seed: int = 0) -> LSTMLM:
  """The model described by a run's `model.json`."""
  return LSTMLM(meta["vocab_size"], meta["embed_dim"], meta["hidden_dim"], meta["num_layers"],
                rngs=nnx.Rngs(seed))


def length_buckets(max_len: int) -> list[int]:
  """Token widths a batch is padded to (16, 32, ... and `max_len`): few shapes, few compiles."""
  out, b = [], 16
  while b < max_len:
    out.append(b)
    b *= 2
  return out + [max_len]
