"""Scale benchmark: the cost of the data stage and of pretraining as the number of patients grows.

  rltf bench scale --patients 1000000 [--workdir DIR] [--chunk-patients 100000]
                       [--steps 5] [--meds DIR]

Writes an N-patient simulated MEDS dataset in shards (`DIR/meds-<N>`, `--chunk-patients` a shard,
drawn a chunk at a time; reused when it exists, or give one with `--meds`), then runs each stage
in its own process and prints its wall time and peak resident size (`ru_maxrss` of that process:
anonymous memory plus the pages of memory-mapped files it touched) and its peak anonymous memory
(sampled every 20 ms: what has to fit, since the kernel can drop clean mapped pages):

  write     the sharded simulator draw, written as MEDS (skipped when the dataset exists)
  read      `meds.read_meds_values`: the streaming MEDS reader
  data      the pipeline's data stage: `load_with_report` (read, splits, code families), the
            vocabulary (`Vocabulary.build`) and the dataset saved for the later stages
            (`PatientEvents.save_mapped`, into a temporary directory; `saved_mb` its size)
  pretrain  the data stage, then `--steps` pretraining steps of the default model on the saved
            dataset, memory-mapped as the pipeline's later stages open it (the stage's time is
            the pretraining call's; its memory the whole process's)

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rltf_jax.bench import common

STAGES = ("write", "read", "data", "pretrain")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m rltf_jax.bench scale")
  ap.add_argument("--patients", type=int, required=True)
  ap.add_argument("--workdir", default="runs/scale", help="where the MEDS dataset is written")
  ap.add_argument("--meds", default="", help="an existing MEDS dataset to read instead of a draw")
  ap.add_argument("--chunk-patients", type=int, default=100_000, help="patients per shard")
  ap.add_argument("--steps", type=int, default=5, help="pretraining steps of the last stage")
  ap.add_argument("--seed", type=int, default=5)
  ap.add_argument("--stages", default=",".join(STAGES),
                  help="which stages to run, comma-separated")
  ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage, in this process
  args = ap.parse_args(argv)
  meds_dir = Path(args.meds or Path(args.workdir) / f"meds-{args.patients}")
  if args.stage:
    with common.PeakAnonymous() as anonymous:
      row = _run_stage(args.stage, args, meds_dir)
    common.print_result(dict(row, peak_anon_mb=round(anonymous.mb)))
    return 0
  rows = []
  wanted = args.stages.split(",")
  if unknown := sorted(set(wanted) - set(STAGES)):
    ap.error(f"--stages: unknown stage {unknown[0]!r}; choose from {', '.join(STAGES)}")
  for stage in STAGES:
    if stage not in wanted or (stage == "write" and meds_dir.exists()):
      continue
    cmd = [sys.executable, "-m", "rltf_jax.bench", "scale", "--stage", stage,
           "--patients", str(args.patients), "--meds", str(meds_dir),
           "--chunk-patients", str(args.chunk_patients), "--steps", str(args.steps),
           "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    row = json.loads(out.strip().splitlines()[-1])
    rows.append(row)
    print(f"{stage:9s} {row['seconds']:8.1f} s  peak {row['peak_rss_mb']:8.0f} MiB "
          f"(anonymous {row['peak_anon_mb']:6.0f} MiB)  "
          + ", ".join(f"{k}={v}" for k, v in row.items()
                      if k not in ("stage", "seconds", "peak_rss_mb", "peak_anon_mb")),
          flush=True)
  common.print_result(dict(patients=args.patients, meds=str(meds_dir),
                           **{f"{r['stage']}_{k}": v for r in rows for k, v in r.items() if k != "stage"}))
  return 0


def _run_stage(stage: str, args, meds_dir: Path) -> dict:
  # Each stage imports what it needs before its clock starts (imports are not the stage's time;
  # their memory, ~0.3 GB with JAX, is in every stage's peak).
  if stage == "write":
    from rltf_jax.configs import simulator as simulator_config
    from rltf_jax.commands import simulate as cli
  else:
    from rltf_jax.data import meds
    _data_imports()
  if stage == "pretrain":
    from rltf_jax.data.events import PatientEvents
    from rltf_jax.training import pretrain
  t = time.perf_counter()
  if stage == "write":
    cli.write_in_chunks(simulator_config.get_config(), meds_dir, args.patients, args.seed,
                        args.chunk_patients)
    extra = dict(shards=len(list((meds_dir / "data").iterdir())),
                 parquet_mb=round(sum(p.stat().st_size for p in (meds_dir / "data").iterdir()) / 2**20))
  elif stage == "read":
    ds, _, _ = meds.read_meds_values(meds_dir)
    extra = dict(patients=ds.num_patients, events=ds.num_events, codes=len(ds.codes))
  else:
    with tempfile.TemporaryDirectory(prefix="rltf-scale-") as work:
      ds, vocab, cfg = _data_stage(meds_dir)
      extra = dict(patients=ds.num_patients, events=ds.num_events, vocab=len(vocab))
      saved = ds.save_mapped(Path(work) / "dataset")  # as the pipeline's data stage leaves it
      extra["saved_mb"] = round(sum(p.stat().st_size for p in saved.iterdir()) / 2**20)
      if stage == "pretrain":
        extra["data_seconds"] = round(time.perf_counter() - t, 1)
        extra["data_peak_rss_mb"] = round(common.peak_rss_mb())
        del ds  # the later stages read the saved dataset, memory-mapped, as the pipeline's do
        ds = PatientEvents.open_mapped(saved)
        cfg.pretrain.steps = args.steps
        cfg.pretrain.eval_every = cfg.pretrain.ckpt_every = args.steps
        t = time.perf_counter()
        pretrain.pretrain(cfg, ds, vocab, Path(work) / "pretrain", verbose=False)
        extra["steps"] = args.steps
  return dict(stage=stage, seconds=round(time.perf_counter() - t, 1),
              peak_rss_mb=round(common.peak_rss_mb()), **extra)


def _data_imports():
  from rltf_jax.configs import base  # noqa: F401
  from rltf_jax.data import load, vocab, cohorts  # noqa: F401


def _data_stage(meds_dir: Path):
  """`pipeline._build_data`'s reading and vocabulary, for the default config on `meds_dir`."""
  from rltf_jax.configs import base as base_config
  from rltf_jax.data.load import load_with_report
  from rltf_jax.data.vocab import Vocabulary
  from rltf_jax.data.cohorts import COHORTS
  cfg = base_config.get_config()
  cfg.data.source, cfg.data.path = "meds", str(meds_dir)
  ds, _ = load_with_report(cfg.data)
  targets = [c for cohort in COHORTS.values() for c in cohort.codes]
  vocab = Vocabulary.build(ds, min_count=cfg.data.vocab_min_count, always_include=targets,
                           max_size=cfg.data.vocab_max_size or None)
  return ds, vocab, cfg
