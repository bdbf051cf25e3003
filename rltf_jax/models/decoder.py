"""The CHIRon-style base model: a pre-norm causal transformer over one token per event.

Input: each token's embedding is the sum of its code embedding, a visit-index embedding, an age
embedding (one row per whole year plus a learned direction scaled by age/100, so that nearby ages
stay close) and a place-of-service embedding (raw CMS codes 0..99 map to their own row, anything
else to row 0, "unknown"). Positions enter through rotary embeddings (RoPE), so callers can pass
their own `positions` (packed DPO rows) and generation may run past the training length.

Complete events: a generated event needs a visit, an age and a place of service, not only a code.
At position t the model therefore predicts the NEXT event in two stages:
  1. attribute heads: `new_visit` (does the next event open a new visit? 2 classes), and, for a
     new visit, its place of service (`pos`, 100 classes) and the gap in days since the current
     visit (`gap`, half-octave buckets, see `GAP_EDGES`);
  2. the code head, conditioned on those attributes:
     code_logits = unembed(h_t + e_new_visit + e_pos + e_gap).
     With `model.head_codes` = K > 0 (the default size) the head is factorised by frequency, as an
     adaptive softmax: token ids are in descending training frequency (`vocab.py`), the K most
     frequent (~93% of events at K = 1024 on the simulator) get a full-width output row plus one
     "tail" row, and the remaining codes a softmax of their own behind a rank-`tail_rank`
     projection: log p(c) = log p_head(c) for c < K, log p_head(tail) + log p_tail(c) otherwise.
     It is a normalised distribution over the same vocabulary at about a third of the head's FLOPs
     (the head was two thirds of a step), which buys the base model the steps it needs to converge
     in the same time (docs/config.md says what it cost in loss).
In training the attributes are teacher-forced from the data (the next token's own); in sampling
they are drawn first and then the code (see `rltf_jax.sampling.sampler`). Within a visit the next
event keeps the place of service and gap 0, so the pos and gap heads are trained on new visits
only. EOS carries the last event's attributes, i.e. it is predicted as "same visit, then EOS".
Log-likelihoods of codes (`code_logprobs`) are therefore conditional on the event attributes.

Hot paths use the pure functions at the bottom (`forward`, `code_logprobs`, `prefill`,
`decode_step`) under `jax.jit` over `(params, batch)`: `nnx.split` once, `nnx.merge` inside.
Parameters travel as plain nested dicts (`nnx.to_pure_dict`), which orbax and optax take as is.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rltf_jax.data.sequences import TokenBatch
from rltf_jax.data.vocab import PAD
from rltf_jax.errors import ConfigError
from rltf_jax.models import masks, precision

NUM_POS = 100  # place-of-service rows: CMS codes 1..99 keep their number, everything else is 0
DAYS_PER_YEAR = 365.25
# Lower edges (days) of the gap buckets: 0, 1, 2, 3, 4, 6, 8, 11, 16, ..., 8192 (half octaves).
GAP_EDGES = np.unique(np.concatenate([[0], np.round(2.0 ** (np.arange(0, 27) / 2)).astype(np.int64)]))
NUM_GAP = len(GAP_EDGES)
GAP_MAX_DAYS = int(2 ** 13.5)  # upper end of the last bucket


def pos_rows(pos):
  """Raw CMS place-of-service codes -> embedding rows (0 for unknown / out of range)."""
  return jnp.where((pos > 0) & (pos < NUM_POS), pos, 0).astype(jnp.int32)


def gap_bucket(days):
  """Gap in days -> bucket index (negative gaps count as 0)."""
  edges = jnp.asarray(GAP_EDGES, jnp.int32)
  return jnp.clip(jnp.searchsorted(edges, jnp.maximum(days, 0), side="right") - 1, 0, NUM_GAP - 1)


class NextAttrs(NamedTuple):
  """Attributes of the event that follows each position, all int32 [B, L]."""
  new_visit: Any  # 1 if the next event opens a new visit
  pos_row: Any    # place-of-service row of the next event
  gap: Any        # gap bucket (days since the current token's visit); 0 within a visit
  gap_days: Any   # the gap in days itself


def next_tokens(batch: TokenBatch) -> TokenBatch:
  """The token that follows each position (PAD and zeros after the last column)."""
  shift = lambda a: jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)
  return TokenBatch(*(shift(jnp.asarray(a)) for a in batch))


def next_attributes(batch: TokenBatch, targets: TokenBatch) -> NextAttrs:
  """Teacher-forced attributes of `targets` (the next events) relative to `batch` (the current)."""
  real = jnp.asarray(targets.tokens) != PAD
  new_visit = (jnp.asarray(targets.visit) != jnp.asarray(batch.visit)) & real
  days = jnp.round((jnp.asarray(targets.age) - jnp.asarray(batch.age)) * DAYS_PER_YEAR).astype(jnp.int32)
  days = jnp.where(new_visit, jnp.maximum(days, 0), 0)
  pos_row = jnp.where(real, pos_rows(jnp.asarray(targets.pos)), 0)
  return NextAttrs(new_visit.astype(jnp.int32), pos_row, gap_bucket(days), days)


def num_heads(cfg) -> int:
  h = cfg.num_heads or max(1, cfg.width // 64)
  if cfg.width % h:
    raise ConfigError(f"model.width={cfg.width} is not divisible by model.num_heads={h}")
  return h


def _normal(std):
  return nnx.initializers.normal(std)


def _rms_norm(norm: nnx.RMSNorm, x):
  """`norm(x)` (its parameters and eps), with the scale applied after the normalisation: as
  `nnx.RMSNorm` writes it (rsqrt times scale, then times x), XLA's gradient materialises the scale
  broadcast to the full [B, T, D] shape on a CPU."""
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return (x * jax.lax.rsqrt(var + norm.epsilon)) * norm.scale[...]


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)); x + mlp(norm(x))."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    d, self.heads = cfg.width, num_heads(cfg)
    self.head_dim = d // self.heads
    hidden = cfg.mlp_ratio * d
    init = _normal(0.02)
    out_init = _normal(0.02 / np.sqrt(2 * cfg.num_layers))  # GPT-2 style residual scaling
    self.dtype = precision.compute_dtype(cfg.compute_dtype)
    self.norm1 = nnx.RMSNorm(d, epsilon=cfg.norm_eps, rngs=rngs)
    self.qkv = nnx.Linear(d, 3 * d, use_bias=False, kernel_init=init, rngs=rngs)
    self.out = nnx.Linear(d, d, use_bias=False, kernel_init=out_init, rngs=rngs)
    self.norm2 = nnx.RMSNorm(d, epsilon=cfg.norm_eps, rngs=rngs)
    self.swiglu = cfg.mlp_activation == "swiglu"
    if cfg.mlp_activation not in ("gelu", "swiglu"):
      raise ConfigError(f"model.mlp_activation must be 'gelu' or 'swiglu', got {cfg.mlp_activation!r}")
    self.up = nnx.Linear(d, (2 if self.swiglu else 1) * hidden, use_bias=False, kernel_init=init, rngs=rngs)
    self.down = nnx.Linear(hidden, d, use_bias=False, kernel_init=out_init, rngs=rngs)

  def qkv_heads(self, x_BxTxD, rope):
    """q, k, v as [B, H, T, Dh], rotary embedding applied to q and k."""
    b, t, _ = x_BxTxD.shape
    qkv = self.linear(self.qkv, _rms_norm(self.norm1, x_BxTxD)).reshape(b, t, 3, self.heads, self.head_dim)
    qkv = qkv.transpose(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
    return _rope(qkv[0], rope), _rope(qkv[1], rope), qkv[2]

  def linear(self, layer: nnx.Linear, x):
    """`layer(x)` (bias-free) in the block's compute dtype, with `precision`'s gradient."""
    return precision.matmul(x, layer.kernel[...], self.dtype)

  def finish(self, x_BxTxD, q, k, v, mask_BxTxS):
    """Attention of q over keys k/v ([B, H, S, Dh]) under the mask, then the MLP."""
    b, t, d = x_BxTxD.shape
    # Decoding (one query per row) stays float32: a dot with a single row is not a library matmul,
    # and XLA would first convert a bf16 cache to f32 on every step, in a copy of the whole cache.
    dtype = jnp.float32 if t == 1 else self.dtype
    logits = precision.matmul_nt(q, k, dtype) / np.sqrt(self.head_dim)
    # Masked keys get a large finite negative, so a row with no visible key (a PAD query) gives
    # a uniform average instead of NaN; such rows are never read.
    logits = jnp.where(mask_BxTxS[:, None], logits, -1e30)
    att = jax.nn.softmax(logits, axis=-1)
    y = precision.matmul(att, v, dtype)
    y = y.transpose(0, 2, 1, 3).reshape(b, t, d)
    x = x_BxTxD + self.linear(self.out, y)
    normed = _rms_norm(self.norm2, x)
    if self.swiglu:
      kernel = self.up.kernel[...]
      half = kernel.shape[1] // 2
      if t == 1:
        # A decode step (one query per row): one product, split after. Slicing the kernel would
        # copy both halves of it (2 x d x hidden) on every step, more than the product's output.
        up = self.linear(self.up, normed)
        gate, lin = up[..., :half], up[..., half:]
      else:
        # Two products with the two halves of the kernel: splitting the [.., 2 * hidden] output
        # instead copies both halves of the largest activation (and its gradient) on a CPU.
        gate = precision.matmul(normed, kernel[:, :half], self.dtype)
        lin = precision.matmul(normed, kernel[:, half:], self.dtype)
      h = jax.nn.silu(gate) * lin
    else:
      h = jax.nn.gelu(self.linear(self.up, normed))
    return x + self.linear(self.down, h)


def _rope_tables(positions_BxT, head_dim, base):
  half = head_dim // 2
  inv = 1.0 / (base ** (np.arange(half, dtype=np.float32) / half))
  ang = positions_BxT.astype(jnp.float32)[..., None] * inv  # [B, T, half]
  return jnp.sin(ang)[:, None], jnp.cos(ang)[:, None]       # [B, 1, T, half]


def _rope(x_BxHxTxDh, rope):
  sin, cos = rope
  x1, x2 = jnp.split(x_BxHxTxDh, 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Decoder(nnx.Module):
  """Event decoder; see the module docstring for the heads."""

  def __init__(self, cfg, vocab_size: int, *, rngs: nnx.Rngs):
    d = cfg.width
    self.max_visits, self.max_age_years = int(cfg.max_visits), int(cfg.max_age_years)
    self.rope_base = float(cfg.rope_base)
    self.vocab_size = vocab_size
    self.dtype = precision.compute_dtype(cfg.compute_dtype)
    self.heads = num_heads(cfg)
    self.head_dim = d // self.heads
    if self.head_dim % 2:
      raise ConfigError(f"model head dim {self.head_dim} must be even for rotary embeddings")
    emb = _normal(0.02)
    self.code_embed = nnx.Embed(vocab_size, d, embedding_init=emb, rngs=rngs)
    self.visit_embed = nnx.Embed(cfg.max_visits, d, embedding_init=emb, rngs=rngs)
    self.age_embed = nnx.Embed(cfg.max_age_years + 1, d, embedding_init=emb, rngs=rngs)
    self.age_dir = nnx.Param(emb(rngs.params(), (d,)))
    self.pos_embed = nnx.Embed(NUM_POS, d, embedding_init=emb, rngs=rngs)
    self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = nnx.RMSNorm(d, epsilon=cfg.norm_eps, rngs=rngs)
    # Attribute heads and the embeddings that condition the code head on the next event's attributes.
    self.new_visit_head = nnx.Linear(d, 2, kernel_init=emb, rngs=rngs)
    self.pos_head = nnx.Linear(d, NUM_POS, kernel_init=emb, rngs=rngs)
    self.gap_head = nnx.Linear(d, NUM_GAP, kernel_init=emb, rngs=rngs)
    self.cond_new_visit = nnx.Embed(2, d, embedding_init=emb, rngs=rngs)
    self.cond_pos = nnx.Embed(NUM_POS, d, embedding_init=emb, rngs=rngs)
    self.cond_gap = nnx.Embed(NUM_GAP, d, embedding_init=emb, rngs=rngs)
    head = int(cfg.get("head_codes", 0))
    self.head_codes = head if 0 < head < vocab_size else vocab_size  # K; K = V: one full head
    if self.head_codes < vocab_size:
      self.unembed = nnx.Linear(d, self.head_codes + 1, use_bias=False, kernel_init=emb, rngs=rngs)
      self.tail_proj = nnx.Linear(d, int(cfg.tail_rank), use_bias=False, kernel_init=emb, rngs=rngs)
      self.tail_unembed = nnx.Linear(int(cfg.tail_rank), vocab_size - self.head_codes, use_bias=False,
                                     kernel_init=_normal(1.0 / np.sqrt(int(cfg.tail_rank))), rngs=rngs)
    else:
      self.unembed = nnx.Linear(d, vocab_size, use_bias=False, kernel_init=emb, rngs=rngs)

  # ---------------------------------------------------------------- trunk
  def embed(self, batch: TokenBatch):
    age = jnp.asarray(batch.age, jnp.float32)
    visit = jnp.clip(jnp.asarray(batch.visit), 0, self.max_visits - 1)
    age_row = jnp.clip(jnp.floor(age), 0, self.max_age_years).astype(jnp.int32)
    return (self.code_embed(jnp.asarray(batch.tokens)) + self.visit_embed(visit)
            + self.age_embed(age_row) + (age / 100.0)[..., None] * self.age_dir[...]
            + self.pos_embed(pos_rows(jnp.asarray(batch.pos))))

  def rope_tables(self, positions_BxT):
    """(sin, cos) f32 [B, 1, T, Dh / 2] of the rotary embedding at these positions."""
    return _rope_tables(positions_BxT, self.head_dim, self.rope_base)

  def hidden_and_kv(self, batch: TokenBatch, *, positions=None, attention_mask=None, last_only=False,
                    rope=None):
    """Final hidden states [B, L, D] and each layer's k, v (tuples of [B, H, L, Dh]).

    `last_only`: the hidden state of the last column only ([B, 1, D]), as a prefill needs; the
    last layer then runs its attention and MLP for that column alone (k, v are complete).
    `rope`: the rotary tables of `positions` (`rope_tables`), when the caller has them already."""
    tokens = jnp.asarray(batch.tokens)
    b, l = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(l, dtype=jnp.int32), (b, l))
    mask = masks.causal_padding(tokens, PAD) if attention_mask is None else attention_mask
    rope = self.rope_tables(positions) if rope is None else rope
    x = self.embed(batch)
    ks, vs = [], []
    for i, block in enumerate(self.blocks):
      q, k, v = block.qkv_heads(x, rope)
      if last_only and i == len(self.blocks) - 1:
        x, q, mask = x[:, -1:], q[:, :, -1:], mask[:, -1:]
      x = block.finish(x, q, k, v, mask)
      ks.append(k)
      vs.append(v)
    return _rms_norm(self.final_norm, x), tuple(ks), tuple(vs)

  def hidden(self, batch: TokenBatch, *, positions=None, attention_mask=None):
    """f32 [B, L, D]. `attention_mask` bool [B, L, L] (True: query i may attend key j) replaces
    the default causal + padding mask when given; `positions` int32 [B, L] default to arange."""
    return self.hidden_and_kv(batch, positions=positions, attention_mask=attention_mask)[0]

  def decode_hidden(self, batch_Bx1: TokenBatch, rope_Bx1, cache_k, cache_v, index, key_mask_BxS):
    """One new token per row against the KV cache: per-layer sequences of [B, H, S, Dh] arrays.

    `rope_Bx1`: the rotary tables (`rope_tables`) of the token's position, [B, 1, 1, Dh / 2] each.

    Writes the token's k, v at cache column `index` (shared by all rows: the sampler left-aligns
    prompts so that every row writes the same column) and attends over the columns that
    `key_mask_BxS` allows (which must include `index`). Returns (hidden [B, 1, D], k, v) with k, v
    tuples of the updated per-layer caches. One array per layer (not one stacked array) lets XLA
    update each in place inside a loop and read it without first slicing out a copy of the layer.
    """
    x = self.embed(batch_Bx1)
    mask = key_mask_BxS[:, None, :]
    new_k, new_v = [], []
    for block, layer_k, layer_v in zip(self.blocks, cache_k, cache_v):
      q, k, v = block.qkv_heads(x, rope_Bx1)
      layer_k = jax.lax.dynamic_update_slice(layer_k, k, (0, 0, index, 0))
      layer_v = jax.lax.dynamic_update_slice(layer_v, v, (0, 0, index, 0))
      x = block.finish(x, q, layer_k, layer_v, mask)
      new_k.append(layer_k)
      new_v.append(layer_v)
    return _rms_norm(self.final_norm, x), tuple(new_k), tuple(new_v)

  # ---------------------------------------------------------------- heads
  def attribute_logits(self, hidden):
    """dict of new_visit [.., 2], pos [.., NUM_POS], gap [.., NUM_GAP] logits for the next event."""
    return dict(new_visit=self.new_visit_head(hidden), pos=self.pos_head(hidden), gap=self.gap_head(hidden))

  def _conditioned(self, hidden, new_visit, pos_row, gap):
    """The code head's input: the hidden state plus the next event's attribute embeddings."""
    return hidden + self.cond_new_visit(new_visit) + self.cond_pos(pos_row) + self.cond_gap(gap)

  def _tail_logits(self, x):
    low = precision.matmul(x, self.tail_proj.kernel[...], self.dtype)
    return precision.matmul(low, self.tail_unembed.kernel[...], self.dtype)

  def code_logits(self, hidden, new_visit, pos_row, gap):
    """f32 [.., V]: next code given the next event's attributes (int arrays shaped like hidden[..., 0]).
    With the factorised head these are normalised log-probabilities (softmax gives the same
    distribution, so samplers and filters treat them as logits)."""
    x = self._conditioned(hidden, new_visit, pos_row, gap)
    head = precision.matmul(x, self.unembed.kernel[...], self.dtype)
    if self.head_codes == self.vocab_size:
      return head
    head = jax.nn.log_softmax(head, -1)
    tail = jax.nn.log_softmax(self._tail_logits(x), -1)
    return jnp.concatenate([head[..., :-1], head[..., -1:] + tail], -1)

  def code_logprob(self, hidden, new_visit, pos_row, gap, code):
    """f32 [..]: log p(code | history, attributes) for int `code` shaped like hidden[..., 0],
    without building the [.., V] log-softmax.

    With the factorised head only positions whose code is in the tail need the tail's softmax
    (~7% of training targets): they are gathered into a fixed budget of a quarter of the positions,
    and a batch with more tail codes than that takes the exact all-positions branch instead
    (`lax.cond` runs one of the two), so the value never depends on the budget."""
    x = self._conditioned(hidden, new_visit, pos_row, gap)
    head = precision.matmul(x, self.unembed.kernel[...], self.dtype)
    if self.head_codes == self.vocab_size:
      return _pick_logprob(head, code)
    k = self.head_codes
    lp = _pick_logprob(head, jnp.minimum(code, k))
    flat_x, flat_code = x.reshape(-1, x.shape[-1]), code.reshape(-1)
    n = flat_code.shape[0]
    in_tail = flat_code >= k
    tail_lp = lambda rows: _pick_logprob(self._tail_logits(flat_x[rows]),
                                         jnp.maximum(flat_code[rows] - k, 0))
    everywhere = lambda: jnp.where(in_tail, tail_lp(jnp.arange(n)), 0.0)
    budget = max(16, n // 4)
    if budget >= n:
      return lp + everywhere().reshape(code.shape)

    def within_budget():
      rows = jnp.nonzero(in_tail, size=budget, fill_value=0)[0]
      used = jnp.arange(budget) < in_tail.sum()   # unused slots repeat row 0 and add nothing
      return jnp.zeros(n, lp.dtype).at[rows].add(jnp.where(used, tail_lp(rows), 0.0))

    tail = jax.lax.cond(in_tail.sum() <= budget, within_budget, everywhere)
    return lp + tail.reshape(code.shape)

  def __call__(self, batch: TokenBatch, *, positions=None, attention_mask=None, targets=None):
    """All head outputs; the code head is teacher-forced on `targets` (default: the next tokens)."""
    h = self.hidden(batch, positions=positions, attention_mask=attention_mask)
    targets = next_tokens(batch) if targets is None else targets
    attrs = next_attributes(batch, targets)
    out = self.attribute_logits(h)
    out = {f"{k}_logits": v for k, v in out.items()}
    out["code_logits"] = self.code_logits(h, attrs.new_visit, attrs.pos_row, attrs.gap)
    out["hidden"] = h
    return out


# ---------------------------------------------------------------------------- pure functions
def init_decoder(model_cfg, vocab_size: int, seed: int = 0):
  """(graphdef, params as a pure dict) of a freshly initialised decoder.

  The initialisers run as one jitted program: op by op, each parameter shape would compile its
  own random-number kernels, which takes far longer on a CPU."""
  graphdef, _ = abstract_decoder(model_cfg, vocab_size)
  make = lambda: nnx.to_pure_dict(nnx.split(Decoder(model_cfg, vocab_size, rngs=nnx.Rngs(seed)))[1])
  return graphdef, jax.jit(make)()


def abstract_decoder(model_cfg, vocab_size: int):
  """(graphdef, params of ShapeDtypeStructs) without allocating or initialising anything."""
  model = nnx.eval_shape(lambda: Decoder(model_cfg, vocab_size, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def forward(graphdef, params, batch: TokenBatch, **kwargs):
  """Pure `Decoder.__call__`: jit over (params, batch)."""
  return nnx.merge(graphdef, params)(batch, **kwargs)


def _pick_logprob(logits, idx):
  """log softmax(logits)[idx] as logit[idx] - logsumexp(logits): the same value without writing
  (and differentiating through) a full log-softmax array, which over the vocabulary costs about as
  much as the output matmul itself on a CPU."""
  picked = jnp.take_along_axis(logits, idx[..., None], -1)[..., 0]
  return picked - jax.nn.logsumexp(logits, -1)


def event_logprobs(graphdef, params, batch: TokenBatch, *, positions=None, attention_mask=None,
                   targets: TokenBatch | None = None):
  """Per-position log-probabilities of the next event, dict of f32 [B, L]:

  `code`: log p(next code | history, next attributes); `attributes`: log p(new visit flag) plus,
  for a new visit, log p(place of service) + log p(gap bucket). Both are 0 where the target is PAD.
  `targets[b, t]` is the token that follows position t (default: the next column of `batch`).
  """
  targets = next_tokens(batch) if targets is None else targets
  model = nnx.merge(graphdef, params)
  h = model.hidden(batch, positions=positions, attention_mask=attention_mask)
  attrs = next_attributes(batch, targets)
  out = model.attribute_logits(h)
  real = jnp.asarray(targets.tokens) != PAD
  code = model.code_logprob(h, attrs.new_visit, attrs.pos_row, attrs.gap, jnp.asarray(targets.tokens))
  attr = _pick_logprob(out["new_visit"], attrs.new_visit)
  attr += jnp.where(attrs.new_visit == 1, _pick_logprob(out["pos"], attrs.pos_row)
                    + _pick_logprob(out["gap"], attrs.gap), 0.0)
  return dict(code=jnp.where(real, code, 0.0), attributes=jnp.where(real, attr, 0.0))


def code_logprobs(graphdef, params, batch: TokenBatch, *, positions=None, attention_mask=None,
                  targets: TokenBatch | None = None):
  """f32 [B, L]: log p(next code) at each position (0 where the next token is PAD)."""
  return event_logprobs(graphdef, params, batch, positions=positions, attention_mask=attention_mask,
                        targets=targets)["code"]
