"""A synthetic dataset from a finished run, in MEDS with a data card:
`rltf synthesize --run RUN_DIR --out DIR [--method rltf] [--patients 1000] [--mode continue]`.
What each mode means: `rltf_jax/synthesize.py`. `--distributed` (or the process flags, as on
`launch.py`) runs it over the processes of a multi-process job, each generating its share of the
rows."""

from __future__ import annotations

import argparse
from pathlib import Path

from rltf_jax import batch, synthesize


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="rltf synthesize", description=__doc__.split("\n\n")[0])
  p.add_argument("--run", required=True, type=Path, help="a finished cohort directory of launch.py")
  p.add_argument("--method", default="rltf")
  p.add_argument("--patients", type=int, default=1000)
  p.add_argument("--mode", default="continue", choices=synthesize.MODES)
  p.add_argument("--share", type=float, default=0.5, help="enriched mode: share of cohort prompts")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--shard", type=int, default=1000)
  p.add_argument("--out", required=True, type=Path)
  p.add_argument("--overwrite", action="store_true")
  p.add_argument("--distributed", action="store_true",
                 help="jax.distributed.initialize() from the environment first (SLURM, Open MPI, TPU VM)")
  batch.add_process_flags(p)
  args = p.parse_args(argv)
  if args.distributed or args.coordinator_address:
    batch.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
  synthesize.synthesize(args.run, args.method, args.patients, args.mode, args.out, share=args.share,
                        seed=args.seed, shard=args.shard, overwrite=args.overwrite)
  return 0
