#!/bin/bash
# One benchmark sitting on this machine's CPU: the figures the README's Benchmarks section and the
# issue notes quote, back to back (pretraining at the default run's shape, factorised and with one
# full head; pretraining, sampling and DPO at the peers' shapes). Each bench's JSON is trimmed to
# the figures quoted. Run it with nothing else busy (pause a sweep with `kill -STOP -<pgid>`,
# resume with `kill -CONT -<pgid>`); the peers need PyTorch (see the README).
#
#   bash rltf_jax/bench/cpu_sitting.sh
set -u
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
FIELDS="bench head_codes vocab width layers step_s steps_per_s tokens_per_s new_tokens_per_s pair_tokens_per_s
mfu ceiling_gflops flops_per_step tail_share split_prefill_s split_decode_step_s split_draw_s
kv_cache_read_bytes_per_step read_gbps cache_read_floor_s split_forward_s split_forward_gflop
split_step_over_forward step_gflop"
trim() { tail -1 | "$PY" -c "import json, sys; keep = set(sys.argv[1].split()); d = json.loads(sys.stdin.read())
print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in d.items() if k in keep}))" "$FIELDS"; }
bench() { echo "$1"; shift; "$PY" -m rltf_jax.bench "$@" 2>&1 | trim; }
bench "pretrain, default shape, factorised head" pretrain --vocab 7900 --width 128 --layers 2 --heads 4 --batch 16 --seq 128 --mlp gelu --steps 30
bench "pretrain, default shape, full head" pretrain --vocab 7900 --width 128 --layers 2 --heads 4 --batch 16 --seq 128 --mlp gelu --head-codes 0 --steps 30
bench "pretrain, peer shape, full head" pretrain --head-codes 0 --steps 20
bench "sample, peer shape, full head" sample
bench "dpo, peer shape, full head" dpo
