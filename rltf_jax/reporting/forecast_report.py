"""The report's lead section: calibration and discrimination of the rare target per stratum, for
every method beside the forecast anchors (`rltf_jax.evaluation.forecast`), and a reliability plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rltf_jax import io
from rltf_jax.evaluation import forecast
from rltf_jax.evaluation.forecast import ANCHORS, STRATA
from rltf_jax.formatting import ci_text
from rltf_jax.reporting.results import cohort_of, fmt, label, lookup

ANCHOR_LABELS = dict(ceiling="ceiling (CatBoost on the prompt, recalibrated)",
                     prompt_rule="prompt rule (target iff in the prompt)",
                     logit_bias="base + logit bias (calibrated, no training)",
                     stratum_bias="base + a logit bias per stratum (no training)",
                     truth="truth (copy of the true continuation)", never="never (no target)")
STRATUM_LABELS = dict(all="all", new_onset="new onset", repeat="repeat")


def lead_stratum(cohort) -> str:
  """Where a cohort's goal (a `Cohort`) is judged: new onset for acute cohorts, all patients for
  chronic ones."""
  return "new_onset" if cohort.acute else "all"


def forecast_rows(cohort_results: dict) -> list[tuple[str, dict]]:
  """(row label, per-stratum metrics) for every method, then the anchors (from the first method
  that has them: every method's evaluation scores the same anchors on the same patients)."""
  rows = [(label(m), lookup(r, "forecast", "strata")) for m, r in cohort_results.items()
          if lookup(r, "forecast", "strata")]
  anchors = {}
  for r in cohort_results.values():  # the same anchors on the same patients: the first of each
    for name, strata in (lookup(r, "forecast", "anchors") or {}).items():
      anchors.setdefault(name, strata)
  rows += [(ANCHOR_LABELS[a], anchors[a]) for a in ANCHORS if a in anchors]
  return rows


def forecast_comparisons(results: dict) -> dict:
  """{cohort: {"<method>-base" | "<method>-logit_bias": {stratum: {calibration, auroc}}}}: paired
  differences on the same validation patients (`forecast.paired_differences`), from the
  evaluations' per_patient.npz; the logit-bias anchor's p is the base evaluation's."""
  out = {}
  for cohort, ms in results.items():
    if "base" not in ms:
      continue
    base = io.load_npz(Path(ms["base"]["_dir"]) / "per_patient.npz")
    if "test_target_prob" not in base:
      continue
    s = ms["base"]["settings"]
    v = base["test_validation"].astype(bool)
    refs = {"base": base["test_target_prob"]}
    for anchor in ("logit_bias", "stratum_bias"):
      if f"anchor_{anchor}_prob" in base:
        refs[anchor] = base[f"anchor_{anchor}_prob"]
    for method in [m for m in ms if m != "base"]:
      other = io.load_npz(Path(ms[method]["_dir"]) / "per_patient.npz")
      if "test_target_prob" not in other or not np.array_equal(base["test_subject_id"],
                                                               other["test_subject_id"]):
        continue
      for ref, p_ref in refs.items():
        out.setdefault(cohort, {})[f"{method}-{ref}"] = forecast.paired_differences(
            other["test_target_prob"][v], p_ref[v], base["test_target_in_true"][v],
            base["test_target_in_prompt"][v], base["test_weight"][v], int(s["bootstrap_samples"]),
            int(s["seed"]))
  return out


def _comparison_lines(cohort: str, comparisons: dict, lead: str) -> list[str]:
  lines = []
  for pair, strata in comparisons.get(cohort, {}).items():
    method, ref = pair.split("-", 1)
    d = strata.get(lead, {})
    ref_label = dict(base="the base model", logit_bias="base + logit bias",
                     stratum_bias="base + a logit bias per stratum")[ref]
    lines.append(f"- {label(method)} minus {ref_label} "
                 f"({STRATUM_LABELS[lead]}, paired): calibration {ci_text(d.get('calibration'), 2)}, "
                 f"AUROC {ci_text(d.get('auroc'), 3)}.")
  return lines + ([""] if lines else [])


def forecast_section(results: dict, plots: list[str]) -> list[str]:
  """Markdown: one table per cohort (calibration and AUROC per stratum, positives / patients)."""
  out = ["## Calibration and discrimination (K draws per patient)", ""]
  comparisons = forecast_comparisons(results)
  first_any = None
  for cohort, ms in results.items():
    first = next((r for r in ms.values() if r.get("forecast")), None)
    if first is None:
      continue
    first_any = first_any or first
    f = first["forecast"]
    lead = lead_stratum(cohort_of(cohort, results))
    header = ["Method / anchor"] + [f"{STRATUM_LABELS[s]}: {m}" for s in STRATA
                                    for m in ("calibration", "AUROC")]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, strata in forecast_rows(ms):
      cells = [c for s in STRATA for c in (ci_text(lookup(strata, s, "calibration"), 2),
                                           ci_text(lookup(strata, s, "auroc"), 3))]
      table.append("| " + " | ".join([name] + cells) + " |")
    counts = ", ".join(f"{STRATUM_LABELS[s]} {lookup(f, 'strata', s, 'positives')} of "
                       f"{lookup(f, 'strata', s, 'patients')}" for s in STRATA)
    bias = next((lookup(r, "forecast", "logit_bias") for r in ms.values()
                 if lookup(r, "forecast", "logit_bias") is not None), None)
    out += [f"**{cohort_of(cohort, results).abbrev}**: positives / validation patients: {counts}. "
            f"Lead stratum: {STRATUM_LABELS[lead]}. K = {f['samples']} draws of the next "
            f"{f['horizon']} events per patient; p estimated by {f['probability']}"
            + (f"; the logit-bias anchor adds {bias:.2f} to the target codes' logits." if bias is not None
               else "; no base model was evaluated, so there is no logit-bias anchor.") , "",
            *table, "", *_comparison_lines(cohort, comparisons, lead)]
  if first_any is None:
    return []
  out += [
      "How to read it: calibration is the design-weighted sum of p over that of the truth (1: the "
      "generator writes the target as often as the truth has it); AUROC ranks patients by p (0.5: "
      "no better than chance, as a generator that writes the target with one probability for "
      "everyone). The ceiling is the discrimination a calibrated generator can hope for from the "
      "prompt; a fine-tune that does not beat the base + logit-bias anchor on AUROC at calibration "
      "1 has not earned its training. Intervals resample patients within the design's cells.", "",
      *[f"![reliability]({p})" for p in plots], ""]
  return out


def write_reliability_plot(results: dict, out_dir: Path) -> list[str]:
  """reliability_<cohort>.png: binned p against the observed rate, per method (lead stratum)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = []
  for cohort, ms in results.items():
    lead = lead_stratum(cohort_of(cohort, results))
    curves = [(label(m), lookup(r, "forecast", "strata", lead, "reliability", "bins"))
              for m, r in ms.items()]
    curves = [(n, b) for n, b in curves if b]
    if not curves:
      continue
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, bins in curves:
      x = [max(b["mean_p"], 1e-5) for b in bins]
      y = [max(b["observed"], 1e-5) for b in bins]
      ax.plot(x, y, marker="o", label=name)
    ax.plot([1e-5, 1], [1e-5, 1], color="grey", lw=0.8, ls="--", label="calibrated")
    ax.set(xscale="log", yscale="log", xlabel="predicted p (bin mean)", ylabel="observed rate",
           title=f"{cohort_of(cohort, results).abbrev}: reliability ({STRATUM_LABELS[lead]})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"reliability_{cohort}.png"
    fig.savefig(Path(out_dir) / name, dpi=110)
    plt.close(fig)
    names.append(name)
  return names
