"""The report's figures: target recall and F1, AUROC, and per-code prevalence, with the paper's
numbers marked beside ours where it reports the same cell.

  recall_f1.png          target recall and F1 per cohort and method, 95% intervals
  auroc.png              AUROC trained on synthetic only and on real + synthetic
  prevalence_<cohort>.png  per-code prevalence, generated against true continuations: every code,
                           and the rare tail on log axes with the target codes marked

`report.write_report` calls `write_plots` and links the files from report.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rltf_jax import io
from rltf_jax.evaluation import paper_numbers as paper
from rltf_jax.reporting.results import PAPER_NOTE, cohort_of, fmt, label, lookup, method_rank


def write_plots(results: dict, out: Path) -> dict[str, list[str]]:
  """Writes the figures into `out`; returns their file names by report section (fidelity,
  utility, prevalence)."""
  # Imported here: slow to import, and the headless backend is chosen only when plotting.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  files: dict[str, list[str]] = {"fidelity": [], "utility": [], "prevalence": []}
  cohorts = list(results)
  methods = sorted({m for ms in results.values() for m in ms}, key=method_rank)
  x = np.arange(len(cohorts))

  def bars(ax, series, values_fn, paper_fn, title):
    width = 0.8 / max(len(series), 1)
    for i, s in enumerate(series):
      vals, lo, hi, ref = [], [], [], []
      for c in cohorts:
        cell = values_fn(c, s) or {}
        v = cell.get("value")
        ci = cell.get("ci95") or [None, None]
        vals.append(np.nan if v is None else v)
        lo.append(0 if v is None or ci[0] is None else v - ci[0])
        hi.append(0 if v is None or ci[1] is None else ci[1] - v)
        ref.append(paper_fn(c, s))
      pos = x - 0.4 + width * (i + 0.5)
      ax.bar(pos, vals, width, yerr=[lo, hi], capsize=2, label=label(s))
      ref = np.array([np.nan if r is None else r for r in ref], float)
      if np.isfinite(ref).any():
        labelled = PAPER_NOTE in ax.get_legend_handles_labels()[1]
        ax.scatter(pos, ref, marker="x", color="black", zorder=3,
                   label=None if labelled else PAPER_NOTE)
    ax.set_xticks(x, [cohort_of(c, results).abbrev for c in cohorts])
    ax.set_ylim(0, 1.05)
    ax.set_title(title)

  def paper_prf(k):
    def f(c, s):
      col = paper.paper_column(s)
      cell = paper.TABLE5.get(c, {}).get(col) if col else None
      return cell[k] if cell else None
    return f

  fig, axes = plt.subplots(1, 2, figsize=(max(8, 3 + 2.5 * len(cohorts)), 4))
  for ax, (k, name) in zip(axes, ((1, "recall"), (2, "f1"))):
    bars(ax, methods, lambda c, s, n=name: lookup(results[c].get(s, {}), "fidelity", "target", n),
         paper_prf(k), f"Target {name} by method (bars: ours, 95% CI)")
  _legend_below(fig, axes[0])
  fig.savefig(out / "recall_f1.png", dpi=120)
  plt.close(fig)
  files["fidelity"].append("recall_f1.png")

  series = ["real"] + methods

  def auroc_cell(kind):
    def f(c, s):
      ms = results[c]
      if s == "real":
        return lookup(next(iter(ms.values())), "utility", "real", "auroc")
      return lookup(ms.get(s, {}), "utility", kind, "auroc")
    return f

  def paper_auroc(table):
    def f(c, s):
      col = paper.paper_column(s)
      return table.get(c, {}).get(col) if col else None
    return f

  fig, axes = plt.subplots(1, 2, figsize=(max(8, 3 + 2.5 * len(cohorts)), 4))
  bars(axes[0], series, auroc_cell("synthetic"), paper_auroc(paper.TABLE6), "AUROC, trained on synthetic only")
  bars(axes[1], series, auroc_cell("augmentation"), paper_auroc(paper.TABLE7), "AUROC, real + synthetic")
  for ax in axes:
    ax.axhline(0.5, color="grey", lw=0.5, ls="--")
  _legend_below(fig, axes[0])
  fig.savefig(out / "auroc.png", dpi=120)
  plt.close(fig)
  files["utility"].append("auroc.png")

  for cohort, ms in results.items():
    # Top row: every code on linear axes; bottom row: the rare tail on log axes, where the rare
    # codes this project is about are not all at (0, 0).
    fig, axes = plt.subplots(2, len(ms), figsize=(3.2 * len(ms), 6.6), squeeze=False)
    target_codes = cohort_of(cohort, results).codes
    for ax, tail, (method, m) in zip(axes[0], axes[1], ms.items()):
      path = Path(m["_dir"]) / "prevalence.npz"
      if path.exists():
        z = io.load_npz(path)
        real, syn = z["continuations_real"], z["continuations_synthetic"]
        target = np.isin(z["continuations_codes"], target_codes)
        ax.scatter(real[~target], syn[~target], s=6, alpha=0.6, label="other codes")
        ax.scatter(real[target], syn[target], s=18, color="red", label="target codes")
        ax.legend(fontsize=6, loc="upper left")
        top = float(max(real.max(initial=0), syn.max(initial=0), 1e-3)) * 1.05
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        rare_tail(tail, real, syn, z["continuations_codes"], target)
      r = lookup(m, "prevalence", "continuations", "pearson_r", "value")
      ax.set_title(f"{label(method)}\nr = {fmt(r, 2)}", fontsize=9)
      ax.set_xlabel("real prevalence (true continuations)", fontsize=8)
      ax.set_ylabel("synthetic prevalence (generated)", fontsize=8)
    fig.suptitle(f"{cohort_of(cohort, results).abbrev}: per-code prevalence, one dot per code", fontsize=10)
    fig.tight_layout()
    name = f"prevalence_{cohort}.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    files["prevalence"].append(name)
  return files


TAIL = 0.01  # the rare tail: codes with a real prevalence at or below 1% (and every target code)


def rare_tail(ax, real: np.ndarray, syn: np.ndarray, codes: np.ndarray, target: np.ndarray) -> None:
  """The codes of real prevalence <= TAIL and the target codes on log-log axes, the target codes
  marked and named. A prevalence of 0 cannot sit on a log axis: it is drawn at the floor line
  (half the smallest nonzero prevalence), labelled 0."""
  keep = ((real > 0) & (real <= TAIL)) | ((real == 0) & (syn > 0) & (syn <= TAIL)) | target
  nonzero = np.concatenate([real[real > 0], syn[syn > 0]])
  floor = 0.5 * float(nonzero.min()) if nonzero.size else 1e-6
  x, y = np.where(real > 0, real, floor), np.where(syn > 0, syn, floor)
  other = keep & ~target
  ax.scatter(x[other], y[other], s=6, alpha=0.5, label=f"codes, real prevalence <= {TAIL:.0%}")
  ax.scatter(x[target], y[target], s=30, color="red", marker="D", label="target codes")
  for i in np.flatnonzero(target):
    ax.annotate(str(codes[i]).split("/")[-1], (x[i], y[i]), fontsize=6, color="red",
                xytext=(3, 3), textcoords="offset points")
  top = max(TAIL, float(max(x[keep].max(initial=floor), y[keep].max(initial=floor)))) * 1.5
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.plot([floor, top], [floor, top], color="grey", lw=0.8)
  ax.axhline(floor, color="grey", lw=0.5, ls=":")
  ax.axvline(floor, color="grey", lw=0.5, ls=":")
  ax.set_xlim(floor * 0.7, top)
  ax.set_ylim(floor * 0.7, top)
  ax.set_title("rare tail, log scale (dotted lines: 0)", fontsize=8)
  ax.set_xlabel("real prevalence", fontsize=8)
  ax.set_ylabel("synthetic prevalence", fontsize=8)
  ax.legend(fontsize=6, loc="upper left")


def _legend_below(fig, ax) -> None:
  handles, labels = ax.get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=7)
  fig.tight_layout(rect=(0, 0.1, 1, 1))


def write_privacy_plot(privacy_dir: Path, cohort, out: Path) -> str | None:
  """privacy_<cohort>.png (`cohort` a `Cohort`): distance to the closest reference record (empirical CDFs; all patients
  and cohort members) for each method, the anchors and the holdout, and record lengths released
  against holdout. Returns the file name, or None when the run has no distances."""
  from rltf_jax.evaluation import dataset_privacy  # pylint: disable=g-import-not-at-top
  path = privacy_dir / dataset_privacy.ARRAYS_FILE
  if not path.exists():
    return None
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  z = io.load_npz(path)
  names = sorted({k.split(".")[0] for k in z if k.endswith(".all.synthetic")},
                 key=lambda n: (n in ("copy", "marginals"), method_rank(n)))
  ecdf = lambda ax, v, **kw: ax.plot(np.sort(v), np.arange(1, len(v) + 1) / max(len(v), 1), **kw)
  fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
  for ax, pop in zip(axes[:2], ("all", "cohort")):
    holdout = None
    for name in names:
      v = z.get(f"{name}.{pop}.synthetic")
      if v is not None and len(v):
        ecdf(ax, v, label=label(name) if name not in ("copy", "marginals") else f"{name} (anchor)",
             ls="--" if name in ("copy", "marginals") else "-")
        holdout = z.get(f"{name}.{pop}.holdout", holdout)
    if holdout is not None and len(holdout):
      ecdf(ax, holdout, label="holdout (real, unseen)", color="black", lw=1.6)
    ax.set_xlim(-0.02, 1)  # the copy anchor sits at 0
    ax.set_xlabel("Jaccard distance to the closest reference record", fontsize=8)
    ax.set_ylabel("fraction of patients", fontsize=8)
    ax.set_title(f"{'all patients' if pop == 'all' else 'cohort members'}", fontsize=9)
  axes[0].legend(fontsize=6, loc="lower right")
  ax = axes[2]
  for name in names:
    if f"{name}.lengths" in z:
      ecdf(ax, z[f"{name}.lengths"], label=label(name))
  ecdf(ax, z["holdout.lengths"], label="holdout", color="black", lw=1.6)
  ax.set_xscale("log")
  ax.set_xlabel("events per record", fontsize=8)
  ax.set_title("record length", fontsize=9)
  ax.legend(fontsize=6, loc="lower right")
  fig.suptitle(f"{cohort.abbrev}: released records against the reference and holdout "
               "patients", fontsize=10)
  fig.tight_layout()
  name = f"privacy_{cohort.name}.png"
  fig.savefig(out / name, dpi=120)
  plt.close(fig)
  return name
