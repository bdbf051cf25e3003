"""DPO optimiser steps/s on the shapes of `/work/shared/bench/trl_dpo_peer.py`.

    python -m rltf_jax.bench dpo [--V 8000 --D 256 --L 4 --B 8 --PL 96 --CL 96 --steps 30]

Pairs are built as RLTF builds them and as the peer builds them: random prompt and chosen codes,
the rejected continuation the chosen one with one code inserted (odd pairs) or removed (even
pairs) at a random index; continuations end with EOS. The model is the project's decoder with a
SwiGLU MLP of width 4D (the peer's Llama), heads D/64; the optimiser is AdamW with gradient
clipping at 1 (TRL's defaults) and the reference log-probabilities are precomputed, as in the peer.
Like the peer, the first `--warmup` steps are not timed, and pair-tokens per step are counted as
B * (PL + 2 * CL).

The last line printed is one JSON object with `steps_per_s`, `pair_tokens_per_s` and `mfu` (model
FLOPs of one step from XLA's cost analysis, per second, over the matmul ceiling of the compute
dtype, `--dtype`, measured by `rltf_jax.bench.common`; the float32 ceiling is printed beside it),
and the split: the forward pass alone (`split_forward_s`, its GFLOP) and the step's time over it.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rltf_jax.configs import base as base_config
from rltf_jax.bench import common as bench_common
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import NUM_SPECIAL, Vocabulary
from rltf_jax.models.decoder import init_decoder
from rltf_jax.training import dpo
from rltf_jax.training.pairs import pack_pairs, pair_logps, slice_batch
from rltf_jax.training.preference import PreferenceData


def synthetic_pairs(num_pairs: int, vocab_size: int, prompt_len: int, cont_len: int, seed: int = 0):
  """(PreferenceData, Vocabulary) of random pairs, rejected = chosen +/- one code."""
  rng = np.random.default_rng(seed)
  codes = np.array([f"OTHER/C{i}" for i in range(vocab_size - NUM_SPECIAL)])
  vocab = Vocabulary(("<pad>", "<bos>", "<eos>", "<unk>") + tuple(codes))
  prompt = rng.integers(0, len(codes), (num_pairs, prompt_len))
  chosen = rng.integers(0, len(codes), (num_pairs, cont_len))
  edit = rng.integers(0, cont_len, num_pairs)
  rejected = []
  for i in range(num_pairs):
    r = list(chosen[i])
    if i % 2:
      r.insert(edit[i], rng.integers(0, len(codes)))
    else:
      del r[edit[i]]
    rejected.append(np.asarray(r))

  def events(rows):
    lens = np.array([len(r) for r in rows])
    n = int(lens.sum())
    # One visit per event, a day apart: a plausible record, attributes change along the row.
    within = np.arange(n) - np.repeat(np.cumsum(lens) - lens, lens)
    return PatientEvents.build(
        subject_id=np.arange(num_pairs), sex=np.zeros(num_pairs), birth_day=np.zeros(num_pairs),
        offsets=np.concatenate([[0], np.cumsum(lens)]), code=np.concatenate(rows),
        day=20_000 + within, visit=within, pos=np.full(n, 11), codes=codes)

  data = PreferenceData(
      prompt=events(list(prompt)), chosen=events(list(chosen)), rejected=events(rejected),
      positive=np.arange(num_pairs) % 2 == 0, split_point=np.full(num_pairs, prompt_len),
      edit_index=edit.astype(np.int64), ends=np.ones(num_pairs, bool), params={})
  return data, vocab


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog="rltf bench dpo", description=__doc__.split("\n")[0])
  p.add_argument("--V", type=int, default=8000, help="vocabulary size")
  p.add_argument("--D", type=int, default=256, help="model width")
  p.add_argument("--L", type=int, default=4, help="layers")
  p.add_argument("--B", type=int, default=8, help="pairs per step")
  p.add_argument("--PL", type=int, default=96, help="prompt length (events)")
  p.add_argument("--CL", type=int, default=96, help="chosen continuation length (events)")
  p.add_argument("--steps", type=int, default=30, help="optimiser steps, warm-up included")
  p.add_argument("--warmup", type=int, default=5, help="untimed first steps (compilation)")
  p.add_argument("--mlp", default="swiglu", choices=["swiglu", "gelu"])
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--head-codes", type=int, default=0,
                 help="model.head_codes (default 0: one full code head, as the peer has)")
  bench_common.add_dtype_flag(p)
  args = p.parse_args(argv)
  if args.steps <= args.warmup:
    p.error("--steps must exceed --warmup")

  data, vocab = synthetic_pairs(args.B * args.steps, args.V, args.PL, args.CL, args.seed)
  packed = pack_pairs(data, vocab)
  cfg = base_config.get_config().model
  cfg.width, cfg.num_layers, cfg.mlp_activation, cfg.num_heads = args.D, args.L, args.mlp, 0
  cfg.head_codes = args.head_codes
  cfg.compute_dtype = args.dtype
  graphdef, params = init_decoder(cfg, len(vocab), seed=args.seed)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-5, weight_decay=0.0))
  # Precomputed reference log-probs, as the peer's precompute_ref_log_probs=True.
  ref_fn = jax.jit(pair_logps, static_argnums=0)
  batches = [jax.device_put(slice_batch(packed, np.arange(s * args.B, (s + 1) * args.B),
                                        packed.tokens.shape[1], packed.target_token.shape[1]))
             for s in range(args.steps)]
  refs = [ref_fn(graphdef, params, b) for b in batches]
  train_step = dpo.make_train_step(graphdef, optimizer, beta=0.1, lam=0.0, placement="outside")
  step = jax.jit(train_step, donate_argnums=0)
  state = dict(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))

  compiled = step.lower(state, (batches[0], *refs[0])).compile()
  flops = bench_common.compiled_flops(compiled)

  for s in range(args.steps):
    if s == args.warmup:
      t0 = time.perf_counter()
    state, metrics = step(state, (batches[s], *refs[s]))
    if s == args.warmup - 1:
      jax.block_until_ready(metrics["loss"])
  jax.block_until_ready(metrics["loss"])
  dt = (time.perf_counter() - t0) / (args.steps - args.warmup)
  ceil = bench_common.ceilings(args.dtype)
  # The split: the forward pass alone (the reference pass's program) against the whole step; a
  # step near 3x its forward spends its time as the FLOPs say (backward ~2x forward).
  trained = state["params"]  # the initial ones were donated to the first step
  forward = ref_fn.lower(graphdef, trained, batches[0]).compile()
  forward_s = bench_common.time_call(forward, trained, batches[0], repeats=10)
  forward_flops = bench_common.compiled_flops(forward)
  bench_common.print_result(dict(
      bench="dpo", device=jax.devices()[0].device_kind, V=args.V, D=args.D, L=args.L, B=args.B,
      dtype=args.dtype, **ceil,
      PL=args.PL, CL=args.CL, mlp=args.mlp, packed_width=int(packed.tokens.shape[1]),
      scored_tokens=int(packed.target_token.shape[1]), steps_per_s=1.0 / dt,
      pair_tokens_per_s=args.B * (args.PL + 2 * args.CL) / dt, step_gflop=flops / 1e9,
      mfu=(flops / dt / 1e9 / ceil["ceiling_gflops"]) if flops else None,
      final_loss=float(metrics["loss"]), peak_rss_mb=bench_common.peak_rss_mb(),
      split_forward_s=forward_s, split_forward_gflop=forward_flops / 1e9,
      split_step_over_forward=dt / forward_s))
  return 0


if __name__ == "__main__":
  main()
