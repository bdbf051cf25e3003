"""Is rarity faithful? The goal of issue 29, checked per run from its evaluations' metrics.json:

  calibration     the fine-tune's forecast calibration within [0.8, 1.25] overall and in every
                  stratum with at least 30 validation positives;
  discrimination  its AUROC in the lead stratum (new onset for acute cohorts, all patients for
                  chronic ones) at least the base + logit-bias anchor's and within 0.05 of the
                  ceiling's;
  the rest        ROUGE-1 and synthetic-data AUROC at least the base model's minus 0.01.

  rltf rarity RUN_DIR [RUN_DIR ...] [--method rltf] [--results RESULTS.md [--block NAME]]

prints one markdown table (a row per run directory: `<workdir>/<cohort>[-<run_name>]`) with each
criterion's numbers, intervals and verdict, then, where a cohort has several runs (training
seeds), one line per run: in how many of its seeds each criterion is met.

Beside the fine-tune's calibration stands the base model's `stratum_bias` anchor on the same
validation patients: two biases tuned on the same modelling patients, no training. Where that
anchor also misses the range, the miss is the validation sample's (or the tuning sample's)
chance, not the fine-tune's.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rltf_jax.data.cohorts import get_cohort
from rltf_jax.errors import DataError, cli_main
from rltf_jax.formatting import ci_text, fmt, lookup
from rltf_jax.reporting import reproduction

CALIBRATION_RANGE = (0.8, 1.25)
MIN_POSITIVES = 30
CEILING_MARGIN = 0.05
REST_MARGIN = 0.01
STRATA = ("all", "new_onset", "repeat")


def markers(block: str | None) -> tuple[str, str]:
  """The RESULTS.md markers of a rarity table: `<!-- rarity[-block]:start/end -->`."""
  name = f"rarity-{block}" if block else "rarity"
  return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def _metrics(run_dir: Path, method: str) -> dict:
  path = run_dir / "eval" / method / "metrics.json"
  if not path.exists():
    raise DataError(f"{path} does not exist: evaluate {method!r} in {run_dir} first")
  return json.loads(path.read_text())


def _value(m, *keys):
  return lookup(m, *keys, "value")


def _training_seconds(run_dir: Path, method: str) -> float | None:
  run = run_dir / method / "run.json"
  if not run.exists():
    return None
  rec = json.loads(run.read_text())
  return rec["finished"] - rec["started"] if rec.get("finished") and rec.get("started") else None


def check(run_dir: str | Path, method: str = "rltf") -> dict:
  """Every criterion of the goal for `method` in one run directory (its base model beside it)."""
  run_dir = Path(run_dir)
  m, base = _metrics(run_dir, method), _metrics(run_dir, "base")
  cohort = get_cohort(m["cohort"]) if m.get("cohort") else None
  lead = "new_onset" if m.get("cohort_acute") else "all"
  f = m.get("forecast") or {}
  anchors = {**(lookup(base, "forecast", "anchors") or {}), **(f.get("anchors") or {})}
  calib = {s: lookup(f, "strata", s, "calibration") for s in STRATA}
  judged = [s for s in STRATA if s == "all" or (lookup(f, "strata", s, "positives") or 0) >= MIN_POSITIVES]
  in_range = lambda c: c is not None and c.get("value") is not None and \
      CALIBRATION_RANGE[0] <= c["value"] <= CALIBRATION_RANGE[1]
  auroc = _value(f, "strata", lead, "auroc")
  bias_auroc = _value(anchors, "logit_bias", lead, "auroc")
  ceiling_auroc = _value(anchors, "ceiling", lead, "auroc")
  rouge, rouge_base = _value(m, "fidelity", "rouge1"), _value(base, "fidelity", "rouge1")
  syn, syn_base = _value(m, "utility", "synthetic", "auroc"), _value(base, "utility", "synthetic", "auroc")
  ok = lambda a, b, margin=0.0: a is not None and b is not None and a >= b - margin
  return dict(
      run=run_dir.name, cohort=cohort.abbrev if cohort else m.get("cohort"), lead=lead,
      positives={s: lookup(f, "strata", s, "positives") for s in STRATA},
      calibration={s: calib[s] for s in STRATA}, calibration_judged=judged,
      calibration_stratum_bias=lookup(anchors, "stratum_bias", "all", "calibration"),
      calibration_met=all(in_range(calib[s]) for s in judged),
      auroc=lookup(f, "strata", lead, "auroc"), auroc_logit_bias=bias_auroc, auroc_ceiling=ceiling_auroc,
      discrimination_met=ok(auroc, bias_auroc) and ok(auroc, ceiling_auroc, CEILING_MARGIN),
      rouge1=rouge, rouge1_base=rouge_base, rouge1_met=ok(rouge, rouge_base, REST_MARGIN),
      auroc_synthetic=syn, auroc_synthetic_base=syn_base, synthetic_met=ok(syn, syn_base, REST_MARGIN),
      calibration_biases=lookup(m, "training", "calibration"),
      training_seconds=_training_seconds(run_dir, method))


def _yes(flag: bool) -> str:
  return "**met**" if flag else "not met"


def table(checks: list[dict]) -> str:
  """Markdown: one row per run."""
  header = ["Run", "Cohort", "Lead", "Calibration all", "new onset", "repeat", "Base + stratum bias, all",
            "Calibration",
            "AUROC (lead)", "logit bias / ceiling", "Discrimination", "ROUGE-1 (base)",
            "Syn. AUROC (base)", "Rest", "Fine-tune s"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for c in checks:
    strata = [f"{ci_text(c['calibration'][s], 2)} ({c['positives'][s]})" for s in STRATA]
    rest = c["rouge1_met"] and c["synthetic_met"]
    lines.append("| " + " | ".join([
        c["run"], c["cohort"], c["lead"].replace("_", " "), *strata,
        ci_text(c["calibration_stratum_bias"], 2), _yes(c["calibration_met"]),
        ci_text(c["auroc"], 2), f"{fmt(c['auroc_logit_bias'], 3)} / {fmt(c['auroc_ceiling'], 3)}",
        _yes(c["discrimination_met"]), f"{fmt(c['rouge1'], 3)} ({fmt(c['rouge1_base'], 3)})",
        f"{fmt(c['auroc_synthetic'], 3)} ({fmt(c['auroc_synthetic_base'], 3)})", _yes(rest),
        fmt(c["training_seconds"], 0)]) + " |")
  return "\n".join(lines)


def seedless(run: str) -> str:
  """A run directory's name without its training seed's suffix (`rltf_jax.sweep.with_seeds`)."""
  return re.sub(r"-s\d+$", "", run)


def summary(checks: list[dict]) -> str:
  """Markdown: per run over its training seeds (directories `<run>` and `<run>-s<seed>`), in how
  many seeds each criterion and the whole goal is met."""
  by_cohort: dict[str, list[dict]] = {}
  for c in checks:
    by_cohort.setdefault(seedless(c["run"]), []).append(c)
  header = ["Run", "Cohort", "Seeds", "Calibration met", "Discrimination met", "Rest met", "Goal met",
            "Calibration all, per run"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for cohort, cs in by_cohort.items():
    rest = [c["rouge1_met"] and c["synthetic_met"] for c in cs]
    met = [(c["calibration_met"], c["discrimination_met"], r) for c, r in zip(cs, rest)]
    counts = [sum(m[i] for m in met) for i in range(3)] + [sum(all(m) for m in met)]
    per_run = ", ".join(fmt(lookup(c["calibration"], "all", "value"), 2) for c in cs)
    lines.append("| " + " | ".join([cohort, cs[0]["cohort"], str(len(cs)), *(f"{k} of {len(cs)}" for k in counts),
                                    per_run]) + " |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description="Check the faithful-rarity goal per run directory.")
  p.add_argument("run_dirs", nargs="+", type=Path, help="<workdir>/<cohort>[-<run_name>] folders")
  p.add_argument("--method", default="rltf", help="the fine-tune to judge (default rltf)")
  p.add_argument("--results", type=Path, default=None,
                 help="also replace the <!-- rarity:start --> ... <!-- rarity:end --> block of this file")
  p.add_argument("--block", default=None,
                 help="with --results: the <!-- rarity-BLOCK:start/end --> block instead")
  args = p.parse_args(argv)
  checks = [check(d, args.method) for d in args.run_dirs]
  text = table(checks)
  if len({seedless(c["run"]) for c in checks}) < len(checks):
    text += "\n\n" + summary(checks)
  print(text)
  if args.results is not None:
    start, end = markers(args.block)
    command = "rltf rarity " + " ".join(str(d) for d in args.run_dirs) + f" --results {args.results}"
    command += f" --block {args.block}" if args.block else ""
    reproduction.splice(args.results, f"{start}\n<!-- generated by `{command}` -->\n\n{text}\n{end}",
                        start, end)
  return 0


if __name__ == "__main__":
  cli_main(main)
