"""Sweeps: many pipeline runs from one config, then one combined table beside the paper's.

  python -m rltf_jax.sweep --config=configs/sweeps/table2_ablation.py[:smoke|:paper] [--workdir=DIR]
      [--seeds=0,1,2]

A sweep config module defines `get_config(arg)` (the settings every run shares, as a cohort
config does) and `get_sweep(arg)`, a list of runs: `dict(name=..., overrides={"dotted.field": v})`
(`cohort` and `methods` are fields like any other). Runs share one work directory, so the data and
the base model are built once; each run's outputs go to `<workdir>/<cohort>[-<name>]/`. Finished
stages are skipped, so rerunning a sweep only does what is missing. A run that fails is reported
and the others go on; the command exits non-zero if any failed.

Seeds. At laptop size the base model's training seed moves the results more than most settings
do, so every run can be repeated over training seeds: `--seeds` (or the sweep module's optional
`get_seeds(arg)`; default one seed, 0). Seed s adds s to the seeds of model training
(`TRAINING_SEEDS`: pretraining's initialisation and order, the fine-tunes' and baselines' batch
order and initialisation); the data, the preference pairs and the evaluation's patients keep theirs,
so every seed is scored on the same test patients. Seed 0 is the run itself (same directory); seed
s > 0 goes to `<cohort>[-<name>]-s<s>/` with its own base model.

The combined table is written to `<workdir>/sweeps/<sweep>/table.md` and `table.json` (one row per
run, seed and method, then the mean and standard deviation over seeds where there are several);
the last line printed is the path of `table.md`.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

from rltf_jax import configs, host_memory, io, pipeline
from rltf_jax.reporting import experiment
from rltf_jax.data.cohorts import get_cohort
from rltf_jax.evaluation import paper_numbers as paper
from rltf_jax.errors import ConfigError, RLTFError, cli_main

# The config fields a training seed offsets (see the module docstring).
TRAINING_SEEDS = ("pretrain.seed", "rltf.seed", "sft.seed", "lstm.seed", "halo.seed")
# The per-row numbers averaged over seeds.
SUMMARISED = ("precision", "recall", "f1", "rouge1", "auroc_synthetic", "auroc_augmented")


def load_sweep(spec: str):
  """Imports `path[:arg]`; returns (base config, runs, sweep name, seeds)."""
  path, _, arg = configs.resolve(spec).partition(":")
  if not Path(path).is_file():
    raise ConfigError(f"sweep config {path} does not exist")
  module = configs.load_module(path, prefix="sweep")
  if not hasattr(module, "get_sweep"):
    raise ConfigError(f"{path} has no get_sweep(arg): it is a single-run config; use launch.py")
  arg = arg or None
  seeds = parse_seeds(module.get_seeds(arg)) if hasattr(module, "get_seeds") else (0,)
  return module.get_config(arg), module.get_sweep(arg), Path(path).stem, seeds


def sweep_dir(root: str | Path, spec: str) -> Path:
  """Where a sweep's combined outputs go: `<workdir>/sweeps/<the sweep config's file stem>`."""
  return Path(root) / "sweeps" / Path(spec.partition(":")[0]).stem


def parse_seeds(seeds) -> tuple[int, ...]:
  """`"0,1,2"` or a sequence of ints -> distinct non-negative ints, in order."""
  items = seeds.split(",") if isinstance(seeds, str) else list(seeds)
  try:
    out = tuple(int(str(x).strip()) for x in items)
  except ValueError:
    raise ConfigError(f"seeds must be non-negative integers separated by commas, got {seeds!r}") from None
  if not out or min(out) < 0 or len(set(out)) != len(out):
    raise ConfigError(f"seeds must be distinct non-negative integers, got {seeds!r}")
  return out


def with_seeds(base_cfg, runs: list[dict], seeds: tuple[int, ...]) -> list[dict]:
  """Each run once per seed, all runs of one seed before the next seed's: seed 0 as written, seed s > 0 with `TRAINING_SEEDS` offset by s and
  "-s<s>" appended to its directory suffix. Every run gains its `seed`."""
  out = []
  for seed in seeds:  # seed-major: every run at the first seed before any at the next
    for run in runs:
      if seed == 0:
        out.append(dict(run, seed=0))
        continue
      overrides = dict(run.get("overrides", {}))
      for field in TRAINING_SEEDS:
        *section, leaf = field.split(".")
        start = overrides.get(field, _section(base_cfg, section)[leaf])
        overrides[field] = int(start) + seed
      suffix = run.get("run_name", run["name"])
      out.append(dict(run, overrides=overrides, seed=seed,
                      run_name=f"{suffix}-s{seed}" if suffix else f"s{seed}"))
  return out


def _section(cfg, parts: list[str]):
  """The nested ConfigDict at `parts` ([] = `cfg` itself)."""
  for part in parts:
    cfg = cfg[part]
  return cfg


def apply_overrides(cfg, overrides: dict[str, Any]):
  """A copy of `cfg` with dotted fields set (`{"rltf.num_pairs": 100}`)."""
  cfg = copy.deepcopy(cfg)
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = _section(cfg, parents)
    if leaf not in node:
      raise ConfigError(f"sweep override {dotted!r}: the config has no field {leaf!r} there")
    node[leaf] = value
  return cfg


def run_sweep(spec: str, workdir: str | None = None, seeds: str | None = None,
              compilation_cache: bool = False) -> int:
  base_cfg, runs, sweep_name, default_seeds = load_sweep(spec)
  root = pipeline.workdir_of(base_cfg, workdir)
  if compilation_cache:  # the command line's choice (pipeline.use_compilation_cache)
    pipeline.use_compilation_cache(root)
  names = [r["name"] for r in runs]
  if len(set(names)) != len(names):
    raise ConfigError(f"sweep {sweep_name}: run names must be unique, got {names}")
  runs = with_seeds(base_cfg, runs, parse_seeds(seeds) if seeds is not None else default_seeds)
  failures, rows = [], []
  for i, run in enumerate(runs, 1):
    cfg = apply_overrides(base_cfg, run.get("overrides", {}))
    cfg.run_name = run.get("run_name", run["name"])
    label = run["name"] + (f" seed {run['seed']}" if run["seed"] else "")
    print(f"=== [{sweep_name} {i}/{len(runs)}] {label}: cohort {cfg.cohort}, "
          f"methods {', '.join(cfg.methods)}", flush=True)
    t0 = time.time()
    try:
      experiment.run(cfg, str(root))
    except RLTFError as e:
      failures.append((label, str(e)))
      print(f"=== {label} failed: {e}", flush=True)
      continue
    except Exception as e:  # keep the other runs going; the traceback is printed for debugging
      traceback.print_exc()
      failures.append((label, f"{type(e).__name__}: {e}"))
      continue
    print(f"=== {label} finished in {time.time() - t0:.0f}s", flush=True)
    rows.extend(collect_rows(root, cfg, run))
  out = sweep_dir(root, spec)
  table = write_table(out, sweep_name, rows, failures)
  print(table.resolve(), flush=True)
  return 1 if failures else 0


# ---------------------------------------------------------------------- combined table
def _value(metrics: dict, *keys):
  node = metrics
  for k in keys:
    if not isinstance(node, dict) or k not in node:
      return None
    node = node[k]
  return node.get("value") if isinstance(node, dict) else node


def collect_rows(root: Path, cfg, run: dict) -> list[dict]:
  """One row per evaluated method of a finished run."""
  cohort = get_cohort(cfg.cohort)
  cohort_dir = root / (cohort.name + (f"-{cfg.run_name}" if cfg.run_name else ""))
  rows = []
  for method in cfg.methods:
    path = cohort_dir / "eval" / method / "metrics.json"
    if not path.exists():
      continue
    m = json.loads(path.read_text())
    rows.append(dict(
        run=run["name"], seed=int(run.get("seed", 0)), cohort=cohort.name, abbrev=cohort.abbrev,
        method=method,
        num_pairs=int(cfg.rltf.num_pairs), positive_fraction=float(cfg.rltf.positive_fraction),
        positive_pairs=_value(m, "training", "positive_pairs"),
        negative_pairs=_value(m, "training", "negative_pairs"),
        pairs_as_requested=_value(m, "training", "as_requested"),
        precision=_value(m, "fidelity", "target", "precision"),
        recall=_value(m, "fidelity", "target", "recall"),
        f1=_value(m, "fidelity", "target", "f1"),
        true_continuations_with_target=_value(m, "fidelity", "target", "counts", "actual_positive"),
        rouge1=_value(m, "fidelity", "rouge1"),
        auroc_real=_value(m, "utility", "real", "auroc"),
        auroc_synthetic=_value(m, "utility", "synthetic", "auroc"),
        auroc_augmented=_value(m, "utility", "augmentation", "auroc"),
        metrics=str(path)))
  return rows


def _paper(row: dict) -> dict:
  """The paper's numbers for the same cell, where it has them."""
  out = {}
  cell = paper.prf(row["cohort"], row["method"])
  if cell:
    out.update(paper_prf=paper.format_prf(cell),
               paper_auroc_synthetic=paper.auroc(paper.TABLE6, row["cohort"], row["method"]),
               paper_auroc_augmented=paper.auroc(paper.TABLE7, row["cohort"], row["method"]))
  if row["cohort"] == "scd" and row["method"] in ("rltf", "sft"):
    t2 = paper.table2_row("RL" if row["method"] == "rltf" else "SFT", row["num_pairs"],
                          row["positive_fraction"])
    if t2:
      out["paper_table2_f1_auroc_rouge1"] = f"{t2['f1']:.2f} / {t2['auroc']:.2f} / {t2['rouge1']:.3f}"
  return out


def _fmt(x, digits=3) -> str:
  return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def summarise_over_seeds(rows: list[dict]) -> list[dict]:
  """Mean, sample standard deviation and count over seeds of each run and method that has more
  than one seed (`SUMMARISED` numbers; undefined values are left out of their own statistic)."""
  groups: dict[tuple, list[dict]] = {}
  for r in rows:
    groups.setdefault((r["run"], r["cohort"], r["method"]), []).append(r)
  out = []
  for (run, cohort, method), group in groups.items():
    if len(group) < 2:
      continue
    summary = dict(run=run, cohort=cohort, abbrev=group[0]["abbrev"], method=method,
                   seeds=sorted(r["seed"] for r in group))
    for key in SUMMARISED:
      values = [r[key] for r in group if r[key] is not None]
      summary[key] = dict(mean=statistics.fmean(values) if values else None,
                          sd=statistics.stdev(values) if len(values) > 1 else None, n=len(values))
    out.append(summary)
  return out


def _mean_sd(stat: dict, digits: int) -> str:
  if stat["mean"] is None:
    return "-"
  return f"{stat['mean']:.{digits}f}" + (f" ± {stat['sd']:.{digits}f}" if stat["sd"] is not None else "")


def _same_experiments(rows: list[dict]) -> dict[int, str]:
  """Row index -> the earlier run that trained the same method on the same metrics (same pairs
  used and the same numbers): two requested settings that became one experiment."""
  seen, out = {}, {}
  for i, r in enumerate(rows):
    if r.get("positive_pairs") is None:
      continue
    key = (r["cohort"], r["method"], r.get("seed", 0), r["positive_pairs"], r["negative_pairs"],
           r["precision"], r["recall"], r["rouge1"], r["auroc_synthetic"])
    if key in seen:
      out[i] = seen[key]
    else:
      seen[key] = r["run"]
  return out


def _pairs_used(r: dict) -> str:
  if r.get("positive_pairs") is None:
    return "-"
  return f"{r['positive_pairs']} + {r['negative_pairs']}" + ("" if r.get("pairs_as_requested") else " *")


def write_table(out: Path, sweep_name: str, rows: list[dict], failures: list) -> Path:
  rows = [dict(r, **_paper(r)) for r in rows]
  summary = summarise_over_seeds(rows)
  io.atomic_write_json(out / "table.json", dict(sweep=sweep_name, rows=rows, over_seeds=summary,
                                                failures=[dict(run=n, error=e) for n, e in failures]))
  header = ["Run", "Seed", "Cohort", "Method", "N", "P", "Pairs used (pos + neg)", "Precision", "Recall", "F1", "ROUGE-1",
            "AUROC real", "AUROC synthetic", "AUROC augmented", "P/R/F1 (paper)",
            "AUROC syn./aug. (paper)", "Table 2 F1/AUROC/ROUGE-1 (paper)"]
  lines = [f"# Sweep `{sweep_name}`", "",
           "Our numbers on this run's data beside the paper's (on its private claims data; only the "
           "shape should carry over). Per-run details: each row's `metrics.json` and the run's "
           "`report/report.md`. *Pairs used* are the preference pairs a fine-tune trained on: "
           "* marks a row whose data could not give the requested N and P, and *= run* names an "
           "earlier row that trained on the same pairs with the same settings (the same experiment, "
           "not a separate result).", "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  same_experiment = _same_experiments(rows)
  for i, r in enumerate(rows):
    paper_auroc = ("-" if "paper_auroc_synthetic" not in r else
                   f"{r['paper_auroc_synthetic']:.3f} / {r['paper_auroc_augmented']:.3f}")
    cells = [r["run"], r.get("seed", 0), r["abbrev"], r["method"], r["num_pairs"], r["positive_fraction"],
             _pairs_used(r) + (f" = {same_experiment[i]}" if i in same_experiment else ""),
             _fmt(r["precision"], 2), _fmt(r["recall"], 2), _fmt(r["f1"], 2), _fmt(r["rouge1"]),
             _fmt(r["auroc_real"]), _fmt(r["auroc_synthetic"]), _fmt(r["auroc_augmented"]),
             r.get("paper_prf", "-"), paper_auroc, r.get("paper_table2_f1_auroc_rouge1", "-")]
    lines.append("| " + " | ".join(str(c) for c in cells) + " |")
  if summary:
    header = ["Run", "Cohort", "Method", "Seeds", "Precision", "Recall", "F1", "ROUGE-1",
              "AUROC synthetic", "AUROC augmented"]
    lines += ["", "## Over seeds", "",
              "Mean ± sample standard deviation over the training seeds of each run (same data, "
              "preference pairs and test patients).", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in summary:
      cells = [r["run"], r["abbrev"], r["method"], ",".join(map(str, r["seeds"]))]
      cells += [_mean_sd(r[key], 2 if key in ("precision", "recall", "f1") else 3) for key in SUMMARISED]
      lines.append("| " + " | ".join(cells) + " |")
  if failures:
    lines += ["", "## Failed runs", ""] + [f"- `{n}`: {e}" for n, e in failures]
  return io.atomic_write_text(out / "table.md", "\n".join(lines) + "\n")


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="sweep config, e.g. configs/sweeps/table2_ablation.py:smoke")
  parser.add_argument("--workdir", default=None, help="work directory shared by the runs")
  parser.add_argument("--seeds", default=None,
                      help="training seeds, e.g. 0,1,2 (default: the sweep's get_seeds, else 0)")
  args = parser.parse_args(argv)
  host_memory.keep_freed_memory()
  cli_main(lambda: run_sweep(args.config, args.workdir, args.seeds, compilation_cache=True))


if __name__ == "__main__":
  main()
