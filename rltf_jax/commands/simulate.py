"""The simulator's command line: draw synthetic claims, write them as MEDS, print their properties.

Run as the package (`__main__.py`):
  python -m rltf_jax.data.simulate --patients 20000 --seed 0 --report
  python -m rltf_jax.data.simulate --patients 20000 --seed 0 --out data/sim20k   # a MEDS dataset

The draw uses the simulator's default parameters (configs/simulator.py) at the paper's Table-4
cohort frequencies (no `data.min_cohort_percent` floor). `--report` also measures the
evaluation's real-record AUROC per cohort on a separate enriched draw (`--eval-auroc-patients`;
`diagnostics.calibration_aurocs`) and prints it beside the paper's Table 6 "Real" column.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rltf_jax.configs import simulator as simulator_config
from rltf_jax import io as rltf_io
from rltf_jax.data import meds
from rltf_jax.data.simulate import story
from rltf_jax.evaluation import simulator_calibration as diagnostics
from rltf_jax.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="rltf simulate",
      description="Draw synthetic claims; write them as MEDS (--out) and/or print their properties "
                  "(--report).")
  parser.add_argument("--patients", type=int, default=20_000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="", help="write the draw as a MEDS dataset to this directory")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
  parser.add_argument("--chunk-patients", type=int, default=0,
                      help="with --out: draw and write this many patients at a time, one MEDS shard "
                           "each (memory bounded by the chunk; each chunk is its own draw, seed "
                           "(seed, chunk)); 0 = one draw")
  parser.add_argument("--report", action="store_true", help="print the draw's properties")
  parser.add_argument("--report-json", default="", help="also write the properties as JSON here")
  parser.add_argument("--auroc-iterations", type=int, default=30,
                      help="CatBoost iterations per cohort of the report's proxy AUROC (0 skips "
                           "both AUROCs, the proxy and the evaluation's)")
  parser.add_argument("--eval-auroc-patients", type=int, default=400_000,
                      help="population patients of the enriched draw on which the report measures "
                           "the evaluation's real-record AUROC (0 skips it)")
  parser.add_argument("--eval-auroc-members", type=int, default=1_000,
                      help="cohort members per cohort in that measurement (as many non-members)")
  parser.add_argument("--eval-auroc-iterations", type=int, default=200,
                      help="CatBoost iterations of that measurement (eval.catboost_iterations)")
  parser.add_argument("--threads", type=int, default=2, help="CatBoost thread count")
  args = parser.parse_args(argv)
  if args.patients <= 0:
    raise ConfigError(f"--patients must be a positive number of patients, got {args.patients}")
  if not (args.out or args.report or args.report_json):
    raise ConfigError("nothing to do: pass --out DIR (write MEDS) and/or --report / --report-json")
  cfg = simulator_config.get_config()
  if args.chunk_patients:
    if args.report or args.report_json or args.chunk_patients < 0:
      raise ConfigError("--chunk-patients needs a positive size and --out, without --report")
    path = write_in_chunks(cfg, args.out, args.patients, args.seed, args.chunk_patients,
                           overwrite=args.overwrite)
    print(f"wrote MEDS dataset {path}", file=sys.stderr)
    return 0
  print(f"simulating {args.patients:,} patients (seed {args.seed})", file=sys.stderr, flush=True)
  t0 = time.time()
  ds = story.simulate(cfg, args.patients, args.seed, verbose=True)
  seconds = time.time() - t0
  print(f"simulated {ds.num_events:,} events in {seconds:.1f} s", file=sys.stderr, flush=True)
  if args.out:
    # No split file: load_dataset assigns splits from the config (by subject id hash).
    path = meds.write_meds(ds, args.out, overwrite=args.overwrite, splits=False,
                           descriptions=_descriptions(ds.codes))
    print(f"wrote MEDS dataset {path}", file=sys.stderr)
  if args.report or args.report_json:
    props = diagnostics.properties(ds, cfg)
    props.update(seconds=seconds, seed=args.seed)
    aurocs = None
    if args.auroc_iterations > 0:
      print("fitting CatBoost per cohort ...", file=sys.stderr, flush=True)
      aurocs = diagnostics.cohort_aurocs(ds, iterations=args.auroc_iterations,
                                         thread_count=args.threads, seed=args.seed)
      props["aurocs"] = aurocs
    eval_aurocs = None
    if args.eval_auroc_patients > 0 and args.auroc_iterations > 0:
      print(f"measuring the evaluation's real-record AUROC on an enriched draw of "
            f"{args.eval_auroc_patients:,} patients ...", file=sys.stderr, flush=True)
      t1 = time.time()
      eval_aurocs = diagnostics.calibration_aurocs(
          cfg, num_patients=args.eval_auroc_patients, seed=args.seed, members=args.eval_auroc_members,
          others=3 * args.eval_auroc_members, iterations=args.eval_auroc_iterations,
          thread_count=args.threads)
      props["eval_aurocs"] = eval_aurocs
      print(f"  ({time.time() - t1:.0f} s)", file=sys.stderr, flush=True)
    if args.report:
      from rltf_jax.evaluation import paper_numbers  # the paper's column, printed beside ours
      real = {name: paper_numbers.auroc(paper_numbers.TABLE6, name, "real") for name in props["cohorts"]}
      print(diagnostics.format_report(props, aurocs, {k: v for k, v in real.items() if v is not None},
                                      eval_aurocs))
    if args.report_json:
      rltf_io.atomic_write_json(args.report_json, props)
  return 0


def write_in_chunks(cfg, out, patients: int, seed: int, chunk: int, overwrite: bool = False,
                    verbose: bool = True) -> Path:
  """Writes a MEDS dataset of `patients` simulated patients drawn `chunk` at a time, shard k
  holding chunk k (subject ids k * chunk + 1, ...; its own draw, seed [seed, k]), atomically.
  Memory is that of one chunk's draw, so a 10-million-patient dataset is written on a
  workstation. `metadata/codes.parquet` lists the codes of every chunk."""
  with rltf_io.atomic_directory(out, overwrite=overwrite) as tmp:
    (tmp / "data").mkdir()
    code_tables = []
    for k, start in enumerate(range(0, patients, chunk)):
      t0 = time.time()
      n = min(chunk, patients - start)
      ds = story.simulate(cfg, n, seed=int(np.random.SeedSequence([seed, k]).generate_state(1)[0]))
      ds = dataclasses.replace(ds, subject_id=ds.subject_id + start)
      part = meds.write_meds(ds, tmp / f"part{k}", splits=False, subjects_per_shard=n,
                             descriptions=_descriptions(ds.codes))
      (part / "data" / "0.parquet").rename(tmp / "data" / f"{k}.parquet")
      code_tables.append(pq.read_table(part / "metadata" / "codes.parquet"))
      if k == 0:
        (part / "metadata").rename(tmp / "metadata")
      shutil.rmtree(part)
      if verbose:
        print(f"  chunk {k}: {n:,} patients, {ds.num_events:,} events ({time.time() - t0:.1f} s)",
              file=sys.stderr, flush=True)
    codes = pa.concat_tables(code_tables)
    _, first = np.unique(codes.column("code").to_numpy(zero_copy_only=False), return_index=True)
    pq.write_table(codes.take(np.sort(first)), tmp / "metadata" / "codes.parquet")
  return Path(out)


def _descriptions(codes) -> dict[str, str]:
  """ICD-10-CM descriptions for the MEDS code metadata (older-release codes have none)."""
  try:  # lazy: importing the package parses its XML release (seconds); only --out needs it
    import simple_icd_10_cm as icd  # pylint: disable=g-import-not-at-top
  except ImportError:
    return {}
  out = {}
  for c in codes:
    if c.startswith("ICD10CM/") and icd.is_valid_item(c[8:]):
      out[str(c)] = icd.get_description(c[8:])
  return out
