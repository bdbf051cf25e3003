#!/bin/bash
# One benchmark sitting on a GPU: our three benches and the two peers, back to back, float32 then
# bf16, then float32 at "highest" matmul precision (JAX's default float32 dot on a GPU uses TF32).
#
#   bash rltf_jax/bench/gpu_sitting.sh [PEER_DIR] [LOG_DIR]     # defaults ../shared/bench, runs/gpu_bench
#
# Needs one Python ($PYTHON, default python3) holding jax with CUDA, this project's requirements,
# and torch with CUDA, transformers, trl and datasets for the peers. The peers are the scripts in
# PEER_DIR moved onto the GPU and nothing else changed: TRL's `use_cpu=True` becomes False (and
# `bf16=True` for the bf16 pair); generate() gets the model and prompts on cuda, in the dtype of $DT,
# and synchronises before the clock is read. Each run's last line (its JSON) is echoed; whole logs
# are in LOG_DIR.
set -u
cd "$(dirname "$0")/../.."
PEERS=$(realpath "${1:-../shared/bench}")
LOGS=${2:-runs/gpu_bench}
PY=${PYTHON:-python3}
mkdir -p "$LOGS"
GPU_PEERS=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

sed -e 's/use_cpu=True/use_cpu=False/' "$PEERS/trl_dpo_peer.py" > "$GPU_PEERS/trl_dpo_gpu.py"
sed -e 's/use_cpu=True/use_cpu=False/' -e 's/bf16=False/bf16=True/' "$PEERS/trl_dpo_peer.py" > "$GPU_PEERS/trl_dpo_gpu_bf16.py"
"$PY" - "$PEERS/hf_generate_peer.py" "$GPU_PEERS/generate_gpu.py" <<'PY' || exit 1
import sys
src = open(sys.argv[1]).read()
edits = [  # (as the peer has it, on the GPU); a peer that changed fails here instead of timing the CPU
    ("import os, time, json, torch", "import os, time, json, torch\nDT = getattr(torch, os.environ.get('DT', 'float32'))"),
    ("m = LlamaForCausalLM(cfg).eval()", "m = LlamaForCausalLM(cfg).eval().cuda().to(DT)"),
    ("ids = torch.randint(4, V, (B, PL))", "ids = torch.randint(4, V, (B, PL)).cuda()"),
    ("    m.generate(ids, **kw)\n", "    m.generate(ids, **kw); torch.cuda.synchronize()\n"),
    ("    dt = (time.perf_counter() - t) / n", "    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n"),
]
for old, new in edits:
  if src.count(old) != 1:
    sys.exit(f"hf_generate_peer.py no longer has {old!r}: update the GPU edits in gpu_sitting.sh")
  src = src.replace(old, new)
open(sys.argv[2], "w").write(src)
PY
grep -q "use_cpu=False" "$GPU_PEERS/trl_dpo_gpu.py" || { echo "trl_dpo_peer.py no longer has use_cpu=True"; exit 1; }

T0=$(date +%s)
run() {  # name, command...: full log to LOG_DIR/name.log, the JSON line to the terminal
  local name=$1; shift
  echo "== $name ($(( $(date +%s) - T0 )) s)"
  timeout 300 "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
  [ $rc -eq 0 ] || echo "rc=$rc (see $LOGS/$name.log)"
  tail -n 1 "$LOGS/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader 2>/dev/null
run ours_sample_f32 "$PY" -m rltf_jax.bench sample --repeats 20
run peer_generate_f32 "$PY" "$GPU_PEERS/generate_gpu.py"
run ours_dpo_f32 "$PY" -m rltf_jax.bench dpo --steps 105
run peer_dpo_f32 env STEPS=60 "$PY" "$GPU_PEERS/trl_dpo_gpu.py"
run ours_pretrain_f32 "$PY" -m rltf_jax.bench pretrain --steps 50
run ours_sample_bf16 "$PY" -m rltf_jax.bench sample --repeats 20 --dtype bfloat16
run peer_generate_bf16 env DT=bfloat16 "$PY" "$GPU_PEERS/generate_gpu.py"
run ours_dpo_bf16 "$PY" -m rltf_jax.bench dpo --steps 105 --dtype bfloat16
run peer_dpo_bf16 env STEPS=60 "$PY" "$GPU_PEERS/trl_dpo_gpu_bf16.py"
run ours_pretrain_bf16 "$PY" -m rltf_jax.bench pretrain --steps 50 --dtype bfloat16
run ours_sample_f32_highest env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m rltf_jax.bench sample --repeats 20
run ours_dpo_f32_highest env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" -m rltf_jax.bench dpo --steps 105
echo "== done ($(( $(date +%s) - T0 )) s); logs in $LOGS"
rm -rf "$GPU_PEERS"
