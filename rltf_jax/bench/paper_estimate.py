"""How big the `:paper` pretraining is: parameters, FLOPs per step, memory per device, step time.

  python -m rltf_jax.bench.paper_estimate [--config=configs/scd.py:paper] [--vocab=8000]
      [--devices=1] [--mfu=0.4] [--xla]

Nothing runs on a device: the parameters are those of `jax.eval_shape` of the decoder's init
(so the count follows the model code), and the rest is arithmetic, with these assumptions (the
command prints them under its table):

- vocabulary: `data.vocab_max_size` of the config (8,000 at `:paper`: the most frequent codes plus
  every cohort's targets; the paper's vocabulary has 7,954 tokens), unless `--vocab` says;
- FLOPs per step: B T (6 N + 12 L T d). N counts the parameters of the dense kernels (every token
  goes through every kernel: attention, MLP, code and attribute heads; 2 N per token forward, 4 N
  backward: exact for one full code head, as `:paper` has, an overcount for the factorised head,
  whose tail sees only some positions); the embedding tables are lookups and count nothing. 12 L T d per token is attention's
  two products (QK^T and AV, 4 T d forward, twice that backward), dense over the whole T x T
  square as the decoder computes it. Norms, softmaxes, the loss and the optimiser (a few percent)
  are left out; `--xla` prints XLA's count of the same step beside it;
- memory: parameters, gradients and Adam's two moments in float32 (16 bytes per parameter), held
  whole on every device (the state is replicated; with data parallelism only the activations
  divide by the devices). Activations, float32: per token and layer the block input and its norm
  (2d), q, k, v (3d), the attention output, the residual and its norm (3d), the MLP's up
  projection and activation (2 x mlp_ratio d) and the attention logits and probabilities
  (2 a T), plus the code head's logits and their gradient (2 V); XLA's fusion and temporaries
  move the real figure by tens of percent. "Remat" is the same with each block rematerialised
  (`jax.checkpoint`; the decoder does not do this today): only block inputs are kept, and one
  block's activations exist at a time in the backward pass;
- step time: FLOPs / (MFU x peak), the peaks being NVIDIA's dense (no sparsity) datasheet
  figures. `:paper` computes in float32 (`model.compute_dtype`), which XLA runs on TF32 tensor cores
  under JAX's default matmul precision on A100/H100; the bf16 rows are `model.compute_dtype=bfloat16`.
"""

from __future__ import annotations

import argparse
import math
import sys

import jax
import jax.numpy as jnp

from rltf_jax import configs
from rltf_jax.models import decoder as dec

BYTES_F32 = 4
# Dense tensor-core peaks in TFLOP/s (NVIDIA datasheets, SXM parts, without sparsity).
PEAKS_TFLOPS = {"H100 bf16": 989.4, "H100 tf32": 494.7, "A100 bf16": 312.0, "A100 tf32": 156.0}


def param_counts(model_cfg, vocab_size: int) -> dict[str, int]:
  """Parameters of the decoder: all, those of dense kernels (matmul FLOPs), embedding tables."""
  _, params = dec.abstract_decoder(model_cfg, vocab_size)
  total = matmul = embedding = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    n = math.prod(leaf.shape)
    name = str(getattr(path[-1], "key", path[-1]))
    total += n
    matmul += n if name == "kernel" else 0
    embedding += n if name == "embedding" else 0
  return dict(total=total, matmul=matmul, embedding=embedding)


def flops_per_step(matmul_params: int, num_layers: int, width: int, seq_len: int,
                   batch_size: int) -> dict[str, float]:
  """Training FLOPs of one step (module docstring): 6 N per token for the matmuls, 12 L T d per
  token for attention."""
  tokens = batch_size * seq_len
  matmul = 6.0 * matmul_params * tokens
  attention = 12.0 * num_layers * seq_len * width * tokens
  return dict(matmul=matmul, attention=attention, total=matmul + attention)


def memory_bytes(params: int, num_layers: int, width: int, heads: int, mlp_ratio: int,
                 seq_len: int, batch_size: int, vocab_size: int, devices: int = 1) -> dict[str, float]:
  """Bytes per device: the train state, and the activations with and without remat."""
  tokens = batch_size * seq_len / devices
  state = 4 * params * BYTES_F32  # parameters, gradients, Adam m and v
  per_layer = (8 + 2 * mlp_ratio) * width + 2 * heads * seq_len  # floats per token and layer
  head = 2 * vocab_size + width
  full = tokens * (num_layers * per_layer + head) * BYTES_F32
  remat = tokens * (num_layers * width + per_layer + head) * BYTES_F32
  return dict(state=state, activations=full, activations_remat=remat, total=state + full,
              total_remat=state + remat)


def estimate(cfg, vocab_size: int, devices: int = 1, mfu: float = 0.4) -> dict:
  m, p = cfg.model, cfg.pretrain
  heads = dec.num_heads(m)
  counts = param_counts(m, vocab_size)
  flops = flops_per_step(counts["matmul"], m.num_layers, m.width, p.seq_len, p.batch_size)
  mem = memory_bytes(counts["total"], m.num_layers, m.width, heads, m.mlp_ratio, p.seq_len,
                     p.batch_size, vocab_size, devices)
  # Data parallelism splits the FLOPs too; the time is per step of the whole batch.
  times = {name: flops["total"] / devices / (mfu * peak * 1e12) for name, peak in PEAKS_TFLOPS.items()}
  return dict(vocab_size=vocab_size, devices=devices, mfu=mfu, heads=heads, steps=p.steps,
              tokens_per_step=p.batch_size * p.seq_len, params=counts, flops=flops, memory=mem,
              step_seconds=times)


def xla_flops(cfg, vocab_size: int) -> float:
  """XLA's FLOP count of the lowered pretraining step (traced, not compiled; elementwise work
  included)."""
  from rltf_jax.data.sequences import PackedBatch, TokenBatch
  from rltf_jax.training import pretrain
  _, _, step, init, _, _ = pretrain.build_step(cfg, vocab_size, cfg.pretrain.steps)
  b, t = cfg.pretrain.batch_size, cfg.pretrain.seq_len
  i32, f32 = jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32)
  batch = (PackedBatch(i32, i32, f32, i32, i32, i32) if cfg.pretrain.pack else TokenBatch(i32, i32, f32, i32))
  cost = step.lower(jax.eval_shape(init), batch).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", float("nan")))


def _gb(x: float) -> str:
  return f"{x / 2**30:,.1f} GiB"


def table(est: dict, xla: float | None = None) -> str:
  p, f, m = est["params"], est["flops"], est["memory"]
  per_device = f" per device ({est['devices']} devices)" if est["devices"] > 1 else ""
  rows = [("parameters", f"{p['total'] / 1e6:,.1f} M ({p['matmul'] / 1e6:,.1f} M in dense kernels, "
                         f"{p['embedding'] / 1e6:,.1f} M in embedding tables)"),
          ("tokens per step", f"{est['tokens_per_step']:,}"),
          ("FLOPs per step", f"{f['total'] / 1e12:,.2f} TFLOP (matmuls {f['matmul'] / 1e12:,.2f}, "
                             f"attention {f['attention'] / 1e12:,.2f})")]
  if xla is not None:
    rows.append(("XLA's count of the step", f"{xla / 1e12:,.2f} TFLOP (elementwise work included)"))
  rows += [(f"train state{per_device}", f"{_gb(m['state'])} (f32 params, grads, Adam m and v)"),
           (f"activations{per_device}", f"{_gb(m['activations'])}; with remat {_gb(m['activations_remat'])}"),
           (f"memory{per_device}", f"{_gb(m['total'])}; with remat {_gb(m['total_remat'])}")]
  for name, s in est["step_seconds"].items():
    rows.append((f"step time, {name} at MFU {est['mfu']:g}",
                 f"{s * 1e3:,.0f} ms; {est['steps']:,} steps in {s * est['steps'] / 3600:,.1f} h"))
  width = max(len(r[0]) for r in rows)
  lines = [f"| {'quantity':<{width}} | value |", f"|{'-' * (width + 2)}|---|"]
  lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/scd.py:paper", help="config file or packaged name[:arg]")
  parser.add_argument("--vocab", type=int, default=0, help="vocabulary size (default: data.vocab_max_size)")
  parser.add_argument("--devices", type=int, default=1, help="data-parallel devices")
  parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation assumed")
  parser.add_argument("--xla", action="store_true", help="also XLA's FLOP count of the lowered step")
  args = parser.parse_args(argv)
  cfg = configs.load(args.config)
  vocab = args.vocab or int(cfg.data.vocab_max_size)
  est = estimate(cfg, vocab, args.devices, args.mfu)
  m, p = cfg.model, cfg.pretrain
  print(f"`{args.config}`: width {m.width}, {m.num_layers} layers, {est['heads']} heads, MLP x{m.mlp_ratio} "
        f"({m.mlp_activation}), vocabulary {vocab:,}, batch {p.batch_size} x {p.seq_len} tokens, "
        f"compute {m.compute_dtype}\n")
  print(table(est, xla_flops(cfg, vocab) if args.xla else None))
  print("\nAssumptions (rltf_jax/bench/paper_estimate.py): FLOPs 6 N T + 12 L T^2 d per sequence; "
        "f32 params, grads and Adam moments (16 B/param), replicated; f32 activations; dense "
        "datasheet peaks.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
