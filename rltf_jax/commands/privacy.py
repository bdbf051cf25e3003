"""Privacy and fidelity of a released synthetic dataset from the data alone (no model access):
`rltf privacy --synthetic DIR --run RUN_DIR [--out DIR]`. What each metric is: `rltf_jax/evaluation/dataset_privacy.py`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rltf_jax import io, pipeline
from rltf_jax.errors import DataError
from rltf_jax.evaluation import dataset_privacy


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="rltf privacy", description=__doc__.split("\n\n")[0])
  p.add_argument("--synthetic", required=True, type=Path, help="a synthetic MEDS dataset (synthesize)")
  p.add_argument("--run", required=True, type=Path, help="the cohort run directory it came from")
  p.add_argument("--out", type=Path, default=None,
                 help="folder for privacy.json (default: the synthetic dataset, if synthesize wrote it)")
  p.add_argument("--patients", type=int, default=10_000, help="real patients per side (at most)")
  p.add_argument("--bootstrap", type=int, default=200)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sensitive", action="append", default=[], metavar="NAME=CODE,CODE",
                 help="a further sensitive code set for attribute inference (repeatable), e.g. "
                      "depression=ICD10CM/F329,ICD10CM/F339")
  args = p.parse_args(argv)
  sensitive = {}
  for spec in args.sensitive:
    name, _, codes = spec.partition("=")
    if not name or not codes:
      raise DataError(f"--sensitive {spec!r}: expected NAME=CODE[,CODE...]")
    sensitive[name] = [c.strip() for c in codes.split(",") if c.strip()]
  ctx = pipeline.open_run(args.run)
  out = dataset_privacy.output_dir(args.synthetic, args.out, ctx.cfg.data)
  synthetic = dataset_privacy.released_dataset(args.synthetic, ctx.cfg.data)
  copies = dataset_privacy.copies_of_training(synthetic, ctx.dataset.subset("train"))
  alarm = None
  if max(copies["code_set_copy_fraction"], copies["record_copy_fraction"]) >= dataset_privacy.COPY_ALARM:
    alarm = (f"WARNING: {copies['record_copies']:,} of {copies['patients']:,} released records "
             f"({100 * copies['record_copy_fraction']:.1f}%) are exact copies of training records "
             f"({copies['code_set_copies']:,} by code set): this is not synthetic data")
    print(alarm, file=sys.stderr, flush=True)
  rng = np.random.default_rng(args.seed)
  pick = lambda ds: ds.select(dataset_privacy._equal_sample(ds.num_patients, args.patients, rng))
  train, holdout = pick(ctx.dataset.subset("train")), pick(ctx.dataset.subset("test"))
  if min(train.num_patients, holdout.num_patients) == 0:
    raise DataError(f"{args.run}: the data has no training or no test patients to compare with")
  result = dataset_privacy.evaluate_dataset(synthetic, train, holdout, ctx.cohort.codes,
                                            num_samples=args.bootstrap, seed=args.seed,
                                            sensitive_codes=sensitive)
  out.mkdir(parents=True, exist_ok=True)
  path = io.atomic_write_json(out / "privacy.json", dict(
      kind="rltf_jax.dataset_privacy", cohort=ctx.cohort.name, train_source="train split",
      holdout_source="test split", representation="code sets, Jaccard distance",
      released_read_as=dict(include=list(ctx.cfg.data.include),
                            bare_code_system=ctx.cfg.data.bare_code_system),
      copies_of_training_records=copies, alarm=alarm,
      anonymeter=dict(reason=dataset_privacy.ANONYMETER_ABSENT), **result))
  table = dataset_privacy.privacy_table(result)
  if alarm:
    table = f"**{alarm}.**\n\n" + table
  card = args.synthetic / "README.md"
  if out == args.synthetic and card.exists():  # the data card gains (or replaces) its privacy section
    text = card.read_text().split(dataset_privacy._CARD_HEADING)[0].rstrip() + "\n\n"
    io.atomic_write_text(card, text + dataset_privacy._CARD_HEADING + "\n\n" + table + "\n")
  print(table)
  print(path)
  return 0
