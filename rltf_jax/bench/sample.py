"""Sampling benchmark: new tokens/s of the jitted KV-cache sampler, on the peer's shapes.

  python -m rltf_jax.bench sample [--vocab 8000 --width 256 --layers 4 --batch 64 --prompt 96 --new 64]

Compare with `/work/shared/bench/hf_generate_peer.py` (transformers' generate, same shapes, heads =
width/64, MLP 4*width SwiGLU) run back to back on the same machine. As the peer, every row
generates exactly `--new` tokens (EOS is blocked until then) with temperature 1 and no top-k/top-p.
FLOPs: XLA's cost analysis of the prefill plus `--new` times that of one loop body (decode + draw);
MFU is quoted against the matmul ceiling of the compute dtype (`--dtype`, default the model's).

What limits it (the `split_*` fields): the prefill, one decode step and one draw timed alone
(the decode with its cache donated, as in the loop), and the bytes of KV cache a decode step
reads (k of every layer for the scores, v for the values) against the read bandwidth measured in
the same run (`read_gbps`): `cache_read_floor_s` is the least time a decode step can take to read
its cache, whatever its FLOPs.

Per CPU-second (`cpu_mfu`): the batch's FLOPs per CPU-second of this process (all threads,
`batch_cpu_s`) against the matmul's (`ceiling_cpu_gflops`): the share of the work the cores did
that was model FLOPs at the ceiling's rate, whatever the machine's load. `cores_busy` is the
batch's CPU seconds per wall second and `ceiling_cores_busy` the matmul's; on a quiet machine
`mfu` is about `cpu_mfu * cores_busy / ceiling_cores_busy`, so the two say whether a batch loses
to the work it does or to cores left idle. Under load the wall-clock `mfu` means little (the
ceiling suffers more than the sampler's small products), `cpu_mfu` still compares runs.

The floor (`floor_*`): what the whole batch would take if every part ran at its limit. A step's
attention streams the cache once and does two FLOPs per element read, so it is bound by the read
bandwidth; the rest of the step (the [rows x width] products, the heads, the draw) is bound by the
matmul ceiling, as is the prefill. The ops run one after another, so a step's floor is the sum of
its two parts: `floor_step_s = cache_read_floor_s + (step FLOPs - attention FLOPs) / ceiling`, and
`floor_mfu` is the MFU of a batch at `floor_prefill_s + new * floor_step_s`: an MFU target above
it cannot be met at this shape, however the kernels are written.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rltf_jax.configs import base as base_config
from rltf_jax.bench import common
from rltf_jax.data.sequences import TokenBatch, bucket_length
from rltf_jax.data.vocab import BOS
from rltf_jax.models import decoder as dec
from rltf_jax.sampling import sampler


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="rltf bench sample")
  ap.add_argument("--vocab", type=int, default=8000)
  ap.add_argument("--width", type=int, default=256)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--prompt", type=int, default=96)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--mlp", default="swiglu", choices=("gelu", "swiglu"))
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--head-codes", type=int, default=0,
                  help="model.head_codes (default 0: one full code head, as the peer has)")
  common.add_dtype_flag(ap)
  args = ap.parse_args(argv)

  cfg = base_config.get_config().model
  cfg.update(dict(width=args.width, num_layers=args.layers, num_heads=0, mlp_activation=args.mlp,
                  compute_dtype=args.dtype, head_codes=args.head_codes))
  graphdef, params = dec.init_decoder(cfg, args.vocab, seed=0)
  rng = np.random.default_rng(0)
  b, lp = args.batch, args.prompt
  tokens = rng.integers(4, args.vocab, (b, lp)).astype(np.int32)
  tokens[:, 0] = BOS
  visit = np.cumsum(rng.random((b, lp)) < 0.2, axis=1).astype(np.int32)
  prompt = TokenBatch(tokens, visit, (40 + visit * 0.3).astype(np.float32), np.full((b, lp), 11, np.int32))
  plen = np.full(b, lp, np.int32)
  run = lambda seed: sampler.sample(graphdef, params, prompt, plen, max_new=args.new, min_new=args.new,
                                    temperature=1.0, top_k=0, top_p=1.0, seed=seed)
  t = time.perf_counter()
  run(0)
  first_s = time.perf_counter() - t
  times, cpu_times = [], []
  for i in range(args.repeats):
    t, c = time.perf_counter(), time.process_time()
    out = run(i + 1)
    times.append(time.perf_counter() - t)
    cpu_times.append(time.process_time() - c)
  batch_s, batch_cpu_s = float(np.median(times)), float(np.median(cpu_times))
  assert int(out["num_new"].min()) == args.new

  # FLOPs: prefill once plus one loop body per new token.
  width = bucket_length(lp, sampler.DEFAULT_BUCKETS)
  padded = sampler.pad_to(prompt, width)
  pre = jax.jit(sampler.prefill, static_argnums=(0, 4)).lower(graphdef, params, padded, plen, args.new).compile()
  _, cache = jax.jit(sampler.prefill, static_argnums=(0, 4))(graphdef, params, padded, plen, args.new)

  def draw(params, h, token):  # one event per row from hidden states h, as the loop draws it
    return sampler._draw_event(nnx.merge(graphdef, params), h, sampler.Last(token.visit, token.age, token.pos),
                               jax.random.key(0), 3, (1.0, 0, 1.0), 0, jnp.zeros(b, bool))

  def body(params, cache, token):
    h, cache = sampler.decode(graphdef, params, token, cache, 3)
    return draw(params, h, token), cache

  tok = TokenBatch(*(jnp.asarray(a[:, -1]) for a in prompt))
  body_c = jax.jit(body).lower(params, cache, tok).compile()
  flops = common.compiled_flops(pre) + args.new * common.compiled_flops(body_c)
  ceil = common.ceilings(args.dtype)
  ceil_cpu = common.matmul_ceiling_gflops(dtype=args.dtype, clock=time.process_time)

  # The split: each part alone; the decode's cache is donated and fed back, as in the loop.
  prefill_s = common.time_call(lambda: pre(params, padded, plen), repeats=args.repeats)
  decode_c = jax.jit(lambda p, c, t: sampler.decode(graphdef, p, t, c, 3)[1], donate_argnums=1)
  state = {"cache": decode_c(params, cache, tok)}

  def one_decode():
    state["cache"] = decode_c(params, state["cache"], tok)
    return state["cache"]
  decode_s = common.time_call(one_decode)
  h = jnp.zeros((b, args.width), jnp.float32)
  draw_s = common.time_call(jax.jit(draw), params, h, tok)
  cache_bytes = sum(a.nbytes for a in (*state["cache"].k, *state["cache"].v))  # k for scores, v for values
  read_gbps = common.read_bandwidth_gbps()
  floor = _floor(common.compiled_flops(pre), common.compiled_flops(body_c), state["cache"], args.new,
                 read_gbps, ceil["ceiling_gflops"])
  common.print_result(dict(
      bench="sample", vocab=args.vocab, width=args.width, layers=args.layers, batch=b, prompt=lp,
      new=args.new, mlp=args.mlp, dtype=args.dtype, backend=jax.default_backend(),
      new_tokens_per_s=b * args.new / batch_s, step_s=batch_s / args.new, batch_s=batch_s,
      first_call_s=first_s, flops_per_step=flops / args.new, **ceil,
      mfu=flops / batch_s / (ceil["ceiling_gflops"] * 1e9), peak_rss_mb=common.peak_rss_mb(),
      batch_cpu_s=batch_cpu_s, ceiling_cpu_gflops=ceil_cpu,
      cpu_mfu=flops / batch_cpu_s / (ceil_cpu * 1e9), cores_busy=batch_cpu_s / batch_s,
      ceiling_cores_busy=ceil["ceiling_gflops"] / ceil_cpu,
      split_prefill_s=prefill_s, split_decode_step_s=decode_s, split_draw_s=draw_s,
      kv_cache_read_bytes_per_step=cache_bytes, read_gbps=read_gbps,
      cache_read_floor_s=cache_bytes / (read_gbps * 1e9), **floor))
  return 0


def _floor(prefill_flops, step_flops, cache, new, read_gbps, ceiling_gflops):
  """The batch's least time at this shape (module doc): the attention bound by the cache's read,
  everything else by the matmul ceiling; and the MFU a batch that fast would have."""
  cache_arrays = (*cache.k, *cache.v)
  attention_flops = 2.0 * sum(a.size for a in cache_arrays)  # q.k and att.v: a multiply-add per element
  cache_s = sum(a.nbytes for a in cache_arrays) / (read_gbps * 1e9)
  step_s = cache_s + (step_flops - attention_flops) / (ceiling_gflops * 1e9)
  prefill_s = prefill_flops / (ceiling_gflops * 1e9)
  batch_s = prefill_s + new * step_s
  return dict(floor_prefill_s=prefill_s, floor_step_s=step_s, floor_batch_s=batch_s,
              floor_mfu=(prefill_flops + new * step_flops) / batch_s / (ceiling_gflops * 1e9))
