"""Pretraining step benchmark: tokens/s, step time, peak memory, MFU against the matmul ceiling.

  python -m rltf_jax.bench pretrain [--vocab 8000 --width 256 --layers 4 --heads 0 --batch 16 --seq 256] [--pack 0]

FLOPs per step come from XLA's cost analysis of the compiled train step (forward, backward and
optimizer); MFU = FLOPs / step time / the matmul ceiling of the compute dtype (`--dtype`, default the
model's, float32; "bfloat16" = bf16 operands with float32 accumulation), measured in the same
run. The float32 ceiling is printed beside it (`ceiling_f32_gflops`).
`--pack 1` (default, as the default pretraining) times packed rows of random patient-like
sequences (segments, block-diagonal mask); `--pack 0` one full-length random sequence per row.
`target_tokens_per_s` counts the tokens that carry a loss (not PAD, not a sequence's last token).
With the factorised code head (`model.head_codes`) XLA's count covers the larger branch of the
tail's `lax.cond` (all positions); when the batch's tail codes fit the budget (a quarter of the
positions; `tail_share` says how many there are) the step runs the smaller one, so `flops_per_step`
is corrected by the two branches' difference, 6 x (positions - budget) x (D r + r (V - K)), and
`xla_flops_per_step` keeps XLA's figure. Token ids follow a Zipf law (`--zipf`) because a
frequency-ordered vocabulary has them so, and the factorised head's cost depends on it.
"""

from __future__ import annotations

import argparse
import time

import jax
import ml_collections
import numpy as np

from rltf_jax.configs import base as base_config
from rltf_jax.bench import common
from rltf_jax.data.sequences import PackedBatch, TokenBatch, plan_packing
from rltf_jax.training import pretrain as pt


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="rltf bench pretrain")
  ap.add_argument("--vocab", type=int, default=8000)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--mlp", default="swiglu", choices=("gelu", "swiglu"), help="swiglu = the Llama peers' MLP")
  ap.add_argument("--heads", type=int, default=0, help="attention heads (model.num_heads; 0 = width // 64)")
  ap.add_argument("--steps", type=int, default=10, help="timed steps (after one warm-up step)")
  ap.add_argument("--head-codes", type=int, default=None,
                  help="factorised code head's full rows (model.head_codes; 0 = one full head; default: the config's)")
  ap.add_argument("--zipf", type=float, default=1.25,
                  help="token ids drawn with frequency ~ 1/rank^zipf, as a frequency-ordered vocabulary has "
                       "them (1.25: the top 1,024 ids take ~93%% of tokens, as on the simulator; 0 = uniform)")
  ap.add_argument("--pack", type=int, default=1, choices=(0, 1), help="packed rows (as pretrain.pack)")
  ap.add_argument("--mean-len", type=float, default=50.0, help="mean tokens per packed sequence")
  common.add_dtype_flag(ap)
  args = ap.parse_args(argv)

  cfg = ml_collections.ConfigDict()
  cfg.model = base_config.get_config().model
  cfg.model.update(dict(width=args.width, num_layers=args.layers, num_heads=args.heads, mlp_activation=args.mlp,
                        compute_dtype=args.dtype))
  if args.head_codes is not None:
    cfg.model.head_codes = args.head_codes
  cfg.pretrain = base_config.get_config().pretrain
  cfg.pretrain.update(dict(batch_size=args.batch, seq_len=args.seq, steps=args.steps + 1, pack=bool(args.pack)))
  cfg.mesh = ml_collections.ConfigDict(dict(data=1))
  _, _, step, init, shard, batch_shard = pt.build_step(cfg, args.vocab, args.steps + 1)

  rng = np.random.default_rng(0)
  b, l = args.batch, args.seq
  visit = np.cumsum(rng.random((b, l)) < 0.2, axis=1).astype(np.int32)
  rank = np.arange(1, args.vocab - 3)
  freq = rank ** -args.zipf
  tokens = 4 + rng.choice(len(rank), size=(b, l), p=freq / freq.sum())
  batch = TokenBatch(tokens.astype(np.int32), visit,
                     (40 + visit * 0.3).astype(np.float32), np.full((b, l), 11, np.int32))
  if args.pack:
    batch = _packed(rng, batch, args.mean_len)
  batch = jax.device_put(batch, batch_shard)
  state = jax.jit(init, out_shardings=shard)()
  t = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  xla_flops = flops = common.compiled_flops(compiled)
  head_codes = int(cfg.model.head_codes)
  if 0 < head_codes < args.vocab:
    positions = b * l
    budget = max(16, positions // 4)
    if budget < positions and np.sum(batch.tokens >= head_codes) <= budget:
      r = int(cfg.model.tail_rank)
      flops -= 6.0 * (positions - budget) * (args.width * r + r * (args.vocab - head_codes))
  state, m = compiled(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  ceil = common.ceilings(args.dtype)
  common.print_result(dict(
      bench="pretrain", vocab=args.vocab, head_codes=head_codes, width=args.width, layers=args.layers, batch=b, seq=l,
      zipf=args.zipf, tail_share=float(np.mean(tokens >= cfg.model.head_codes)) if cfg.model.head_codes else 0.0,
      mlp=args.mlp, dtype=args.dtype, backend=jax.default_backend(), devices=len(jax.devices()),
      pack=args.pack, tokens_per_s=b * l / step_s, target_tokens_per_s=float(m["tokens"]) / step_s,
      fill=float(m["tokens"]) / (b * l), step_s=step_s, step_s_min=float(min(times)), compile_s=compile_s,
      flops_per_step=flops, xla_flops_per_step=xla_flops, **ceil, mfu=flops / step_s / (ceil["ceiling_gflops"] * 1e9),
      peak_rss_mb=common.peak_rss_mb(), loss=float(m["loss"])))
  return 0


def _packed(rng, batch: TokenBatch, mean_len: float) -> PackedBatch:
  """`batch`'s rows cut into segments of geometric lengths (>= 3 tokens, about `mean_len`), packed
  as the pretraining packs patients: the rows keep their tokens, PAD after the last segment."""
  b, l = batch.tokens.shape
  n = np.minimum(3 + rng.geometric(1.0 / max(mean_len - 2, 1.0), size=4 * b * l // int(mean_len)), l)
  row, offset, _ = plan_packing(n, l)
  keep = row < b
  segment, positions = np.zeros((b, l), np.int32), np.zeros((b, l), np.int32)
  for i, (r, o, k) in enumerate(zip(row[keep], offset[keep], n[keep])):
    segment[r, o:o + k] = 1 + (offset[keep][row[keep] == r] < o).sum()
    positions[r, o:o + k] = np.arange(k)
  tok = lambda a: np.where(segment > 0, a, 0).astype(a.dtype)
  return PackedBatch(tok(batch.tokens), tok(batch.visit), tok(batch.age), tok(batch.pos), segment, positions)
