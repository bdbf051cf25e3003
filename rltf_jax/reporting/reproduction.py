"""RESULTS.md's Reproduction section: each claim of the paper, our numbers with intervals beside the
paper's, and a plain verdict, from a sweep's finished runs.

  rltf reproduce [--sweep configs/sweeps/rare_cohorts.py] [--table2 configs/sweeps/table2_ablation.py]
      [--workdir DIR] [--results RESULTS.md]

It reads the evaluations of every run and seed of the sweep (those not finished yet are listed as
missing), compares each fine-tune with the base model of the same seed on the same validation
patients, and pools the seeds inside each bootstrap resample of patients
(`report.paired_strata`). Numbers are design-weighted population estimates where the evaluation
drew an enriched sample (`rltf_jax.data.enrich`). The section is written to
`<workdir>/sweeps/<sweep>/reproduction.md`; with `--results` it also replaces the results file's
text between `<!-- reproduction:start -->` and `<!-- reproduction:end -->` (a results file that
does not exist yet is created with both blocks). Table 2 is its own block, between
`<!-- table2:start -->` and `<!-- table2:end -->`, replaced only when `--table2` names its sweep
(the default): `--table2 ''` regenerates the rare cohorts and leaves the file's Table 2 as it is, for when only the rare sweep has been rerun; `--sweep ''` regenerates Table 2 alone (written
to `<workdir>/sweeps/<table2 sweep>/reproduction_table2.md`), for when only it has been rerun.

Verdicts (fixed rules, so that the outcome is not chosen after seeing it). A claim about a
difference *holds* for a cohort when its pooled 95% interval lies wholly on the claimed side,
*fails* when it lies wholly on the other side, and is *undecided* otherwise. Over cohorts: *holds*
when it holds in at least 5 of the 7 (5/7 of those measured), *does not hold* when it holds in at
most 2 (2/7), else *mixed*; fewer than 3 cohorts measured give no verdict. The
recall claim is judged on the new-onset stratum for acute cohorts and on all patients for chronic
ones, and reported for the other strata beside it ("holds only in one stratum").

Table 2 (`--table2`, the N x P ablation on SCD): every row beside the paper's, its recall and F1
minus the base model's, and each claim of the ablation as a paired difference of two rows on the
same patients: *holds* when its 95% interval lies above zero, *fails* when below, else undecided.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import numpy as np

from rltf_jax import io, pipeline
from rltf_jax.data.cohorts import get_cohort
from rltf_jax.errors import DataError, cli_main
from rltf_jax.evaluation import metrics, paper_numbers as paper
from rltf_jax.reporting.report import paired_strata
from rltf_jax.sweep import apply_overrides, load_sweep, sweep_dir, with_seeds

DEFAULT_SWEEP = "configs/sweeps/rare_cohorts.py"
START, END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"
TABLE2_START, TABLE2_END = "<!-- table2:start -->", "<!-- table2:end -->"
ROUGE_MARGIN = 0.02  # "ROUGE-1 barely moves": the pooled difference's interval lies within +-0.02
MEMBERSHIP_MARGIN = 0.02  # "memorization does not rise": membership AUC rises by less than this


def _fmt(cell, digits=2) -> str:
  if not cell or cell.get("value") is None:
    return "n/a"
  lo, hi = cell.get("ci95") or [None, None]
  v = f"{cell['value']:+.{digits}f}"
  return v if lo is None or hi is None else f"{v} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _side(cell, margin: float = 0.0) -> str:
  """"above" / "below" / "within" / "undecided" for an interval against 0 (or +-margin)."""
  if not cell or cell.get("ci95") is None or None in cell["ci95"]:
    return "undecided"
  lo, hi = cell["ci95"]
  if margin:
    return "within" if -margin <= lo and hi <= margin else "undecided"
  return "above" if lo > 0 else ("below" if hi < 0 else "undecided")


def collect_runs(sweep: str, workdir: str | None) -> tuple[Path, dict, list[str]]:
  """(work directory, {cohort: {seed: {method: eval dir}}}, missing run/method labels)."""
  base_cfg, runs, _, seeds = load_sweep(sweep)
  root = pipeline.workdir_of(base_cfg, workdir)
  found, missing = {}, []
  for run in with_seeds(base_cfg, runs, seeds):
    cohort = run["overrides"].get("cohort", base_cfg.cohort)
    name = run.get("run_name", run["name"])
    cohort_dir = root / (get_cohort(cohort).name + (f"-{name}" if name else ""))
    for method in dict.fromkeys(tuple(base_cfg.methods) + ("base", "rltf", "sft")):
      d = cohort_dir / "eval" / method
      if (d / "metrics.json").exists() and (d / "per_patient.npz").exists():
        found.setdefault(cohort, {}).setdefault(run["seed"], {})[method] = d
      elif method in base_cfg.methods:
        missing.append(f"{cohort} seed {run['seed']} {method}")
  return root, found, missing


def _load(d: Path) -> tuple[dict, dict]:
  return json.loads((d / "metrics.json").read_text()), io.load_npz(d / "per_patient.npz")


def cohort_evidence(by_seed: dict) -> dict:
  """Pooled paired differences and per-seed numbers of one cohort."""
  seeds = sorted(s for s, ms in by_seed.items() if "base" in ms)
  loaded = {s: {m: _load(d) for m, d in by_seed[s].items()} for s in seeds}
  if not seeds:
    return {}
  m0, _ = loaded[seeds[0]]["base"]
  B, seed = int(m0["settings"]["bootstrap_samples"]), int(m0["settings"]["seed"])
  out = dict(seeds=seeds, counts=dict(
      validation=m0["patients"]["validation"],
      positives=m0["fidelity"]["target"]["counts"]["actual_positive"],
      new_onset=m0["fidelity"]["target_new_onset"]["counts"]["actual_positive"],
      repeat=m0["fidelity"]["target_repeat"]["counts"]["actual_positive"],
      weighted=bool(m0["fidelity"].get("weighted"))))
  for a, b in (("rltf", "base"), ("sft", "base"), ("rltf", "sft")):
    have = [s for s in seeds if a in loaded[s] and b in loaded[s]]
    if have:
      pairs = [(loaded[s][a][1], loaded[s][b][1]) for s in have]
      out[f"{a}-{b}"] = dict(seeds=have, **paired_strata(pairs[0][0], pairs[0][1], B, seed, pairs[1:]))
      if len(have) > 1:  # each seed's own difference (point estimates), beside the pooled one
        out[f"{a}-{b}"]["per_seed"] = {
            s: {k: v["recall"]["value"] for k, v in paired_strata(x, y, 0, seed).items()}
            for s, (x, y) in zip(have, pairs)}
  # Augmentation minus real (same validation patients, the real classifier is the same per seed).
  aug = [s for s in seeds if "rltf" in loaded[s] and "utility_scores_augmentation" in loaded[s]["rltf"][1]]
  if aug:
    pp = [loaded[s]["rltf"][1] for s in aug]
    v = pp[0]["test_validation"]
    labels = (pp[0]["test_target_in_prompt"] | pp[0]["test_target_in_true"])[v]
    w = pp[0]["test_weight"][v] if "test_weight" in pp[0] else None
    out["augmentation-real"] = metrics.paired_auroc_difference(
        [p["utility_scores_augmentation"] for p in pp], [p["utility_scores_real"] for p in pp],
        labels, B, seed, w)
  per_seed = {}
  for s in seeds:
    for method, (m, _) in loaded[s].items():
      t = m["fidelity"]
      mem = m.get("memorization", {})
      per_seed.setdefault(method, []).append(dict(
          seed=s, recall=t["target"]["recall"]["value"], f1=t["target"]["f1"]["value"],
          recall_new_onset=t["target_new_onset"]["recall"]["value"],
          calibration=(t.get("calibration", {}).get("all") or {}).get("value"),
          rouge1=t["rouge1"]["value"],
          auroc_synthetic=m["utility"]["synthetic"]["auroc"]["value"],
          auroc_real=m["utility"]["real"]["auroc"]["value"],
          membership_auc=(mem.get("membership_inference") or {}).get("value"),
          rouge1_train=(mem.get("rouge1_train") or {}).get("value")))
  # Means over seeds compare like with like: base and RLTF over the seeds where both finished
  # (a partial sweep would otherwise average the base model over more seeds than RLTF).
  both = set(out.get("rltf-base", {}).get("seeds", ()))
  if both:
    for method in ("base", "rltf"):
      per_seed[method] = [r for r in per_seed.get(method, []) if r["seed"] in both]
  out["per_seed"] = per_seed
  return out


def _mean(rows: list[dict], key: str) -> float | None:
  vals = [r[key] for r in rows if r.get(key) is not None]
  return float(np.mean(vals)) if vals else None


def _verdict(outcomes: list[str], claimed: str) -> str:
  """Over cohorts: holds in at least 5/7 of them -> "holds", in at most 2/7 -> "does not hold"."""
  n, held = len(outcomes), sum(o == claimed for o in outcomes)
  if n == 0:
    return "not measured"
  if n < 3:
    return f"too few cohorts ({n})"
  if held >= math.ceil(5 * n / 7):
    return "holds"
  if held <= math.floor(2 * n / 7):
    return "does not hold"
  return "mixed"


def build_section(root: Path, found: dict, missing: list[str], sweep: str) -> tuple[str, dict]:
  """The section's markdown and its numbers (Table 2 is `table2_section`'s)."""
  evidence = {c: cohort_evidence(by_seed) for c, by_seed in found.items()}
  evidence = {c: e for c, e in evidence.items() if e}
  cfg = load_sweep(sweep)[0]  # the sizes the sentence below names are the sweep's own
  ec, ev = cfg.data.enrich, cfg.eval
  lines = [START, "", "## Reproduction", "",
           f"Regenerated by `rltf reproduce --sweep {sweep} --results RESULTS.md` "
           f"from the runs of `rltf sweep --config={sweep}` in `{root}`. Each cohort's base "
           f"model ({_model_shape(cfg)}) pretrains on {int(cfg.data.num_patients):,} simulated patients "
           "with every cohort at the paper's Table-4 prevalence; pairs and evaluation come from a cohort-enriched sample of "
           f"{int(ec.patients):,} further patients (about {int(ec.members_per_cohort):,} members of each "
           f"rare cohort kept), {int(ev.num_test_patients):,} evaluated per cohort (at most "
           f"{float(ev.member_fraction):.0%} members) and {1 - float(ev.model_fraction):.0%} of them "
           "scored, weighted back to the population (precision, F1, ROUGE-1, AUROC are population "
           "estimates; recall is the same weighted or not). Differences are paired (the same validation "
           "patients score both methods) and pooled over the training seeds inside each bootstrap "
           "resample; brackets are 95% intervals. Verdict rules: see "
           "`rltf_jax/reporting/reproduction.py` (fixed before the runs).", ""]
  if missing:
    lines += [f"**Not finished** ({len(missing)} evaluations): " + ", ".join(missing[:30]) +
              (" ..." if len(missing) > 30 else "") + ". The verdicts below use what exists.", ""]
  header = ["Cohort", "Seeds", "Validation positives (new onset / repeat)", "Recall, RLTF - base (lead stratum)",
            "Per seed", "Recall, other strata", "F1, RLTF - base", "ROUGE-1, RLTF - base", "AUROC syn., RLTF - base",
            "Recall base -> RLTF (mean)", "Paper recall CHIRON -> DPO"]
  rows, verdicts = [], {k: [] for k in ("recall", "recall_other", "rouge", "auroc", "augmentation",
                                         "memorization", "sft")}
  for cohort, e in evidence.items():
    c = get_cohort(cohort)
    d = e.get("rltf-base")
    if not d:
      continue
    lead, other = ("new_onset", "all") if c.acute else ("all", "new_onset")
    verdicts["recall"].append(_side(d[lead]["recall"]))
    verdicts["recall_other"].append(_side(d["repeat"]["recall"]))
    verdicts["rouge"].append(_side(d["all"]["rouge1"], ROUGE_MARGIN))
    real = _mean(e["per_seed"]["base"], "auroc_real")
    base_syn = _mean(e["per_seed"]["base"], "auroc_synthetic")
    toward = "above" if (real is not None and base_syn is not None and base_syn < real) else "below"
    verdicts["auroc"].append("closer" if _side(d["all"].get("auroc_synthetic")) == toward else
                             _side(d["all"].get("auroc_synthetic")))
    if "augmentation-real" in e:
      verdicts["augmentation"].append(_side(e["augmentation-real"]))
    mb, mr = _mean(e["per_seed"]["base"], "membership_auc"), _mean(e["per_seed"]["rltf"], "membership_auc")
    if mb is not None and mr is not None:
      verdicts["memorization"].append("within" if mr - mb < MEMBERSHIP_MARGIN else "rises")
    if "rltf-sft" in e:
      verdicts["sft"].append(_side(e["rltf-sft"][lead]["recall"]))
    paper_base, paper_dpo = paper.prf(cohort, "base"), paper.prf(cohort, "rltf")
    counts = e["counts"]
    rows.append([c.abbrev, ",".join(map(str, d["seeds"])),
                 f"{counts['positives']} ({counts['new_onset']} / {counts['repeat']})",
                 f"{_fmt(d[lead]['recall'])} ({lead.replace('_', ' ')})",
                 ", ".join(f"{v[lead]:+.2f}" for v in d.get("per_seed", {}).values()) or "-",
                 f"{other.replace('_', ' ')} {_fmt(d[other]['recall'])}; repeat {_fmt(d['repeat']['recall'])}",
                 _fmt(d[lead]["f1"]), _fmt(d["all"]["rouge1"], 3), _fmt(d["all"].get("auroc_synthetic"), 3),
                 f"{_mean(e['per_seed']['base'], 'recall'):.2f} -> {_mean(e['per_seed']['rltf'], 'recall'):.2f}",
                 f"{paper_base[1]:.2f} -> {paper_dpo[1]:.2f}" if paper_base and paper_dpo else "-"])
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  util_rows = []
  for cohort, e in evidence.items():
    ps = e["per_seed"]
    util_rows.append([get_cohort(cohort).abbrev, f"{_mean(ps['base'], 'auroc_real'):.3f}",
                      f"{_mean(ps['base'], 'auroc_synthetic'):.3f}",
                      f"{_mean(ps['rltf'], 'auroc_synthetic'):.3f}" if "rltf" in ps else "-",
                      _fmt(e.get("augmentation-real"), 3),
                      f"{paper.auroc(paper.TABLE6, cohort, 'real') or float('nan'):.3f} / "
                      f"{paper.auroc(paper.TABLE6, cohort, 'base') or float('nan'):.3f} / "
                      f"{paper.auroc(paper.TABLE6, cohort, 'rltf') or float('nan'):.3f}",
                      " / ".join(f"{_mean(ps[m], 'membership_auc'):.3f}" if m in ps and
                                 _mean(ps[m], 'membership_auc') is not None else "-" for m in ("base", "rltf")),
                      _fmt((e.get("rltf-sft") or {}).get("new_onset" if get_cohort(cohort).acute else "all",
                                                         {}).get("recall"))])
  lines += ["", "Utility, memorization and SFT (means over seeds; differences pooled):", "",
            "| Cohort | AUROC real | AUROC syn. base | AUROC syn. RLTF | Augmented - real (RLTF) | "
            "Paper AUROC real / CHIRON / DPO | Membership AUC base / RLTF | Recall RLTF - SFT (lead stratum) |",
            "|---|---|---|---|---|---|---|---|"]
  lines += ["| " + " | ".join(r) + " |" for r in util_rows]
  claims = [
      ("Recall of rare targets rises far above the base model's (lead stratum: new onset for acute "
       "cohorts, all for chronic)", verdicts["recall"], "above"),
      ("... and in the repeat stratum (the target already in the prompt)", verdicts["recall_other"], "above"),
      (f"ROUGE-1 barely moves (pooled difference within +-{ROUGE_MARGIN})", verdicts["rouge"], "within"),
      ("Synthetic-data AUROC comes closer to the real one", verdicts["auroc"], "closer"),
      ("Augmentation helps (augmented minus real AUROC, RLTF)", verdicts["augmentation"], "above"),
      (f"Memorization does not rise (membership AUC up by less than {MEMBERSHIP_MARGIN})",
       verdicts["memorization"], "within"),
      ("SFT does worse than RLTF (recall, RLTF - SFT)", verdicts["sft"], "above"),
  ]
  lines += ["", "| Claim of the paper | Per cohort | Verdict here |", "|---|---|---|"]
  summary = {}
  for text, outcomes, claimed in claims:
    verdict = _verdict(outcomes, claimed)
    summary[text] = dict(outcomes=outcomes, verdict=verdict)
    tally = ", ".join(f"{o} {outcomes.count(o)}" for o in sorted(set(outcomes))) or "-"
    lines.append(f"| {text} | {tally} (of {len(outcomes)}) | **{verdict}** |")
  lines += ["", END]
  return "\n".join(lines), dict(evidence=_plain(evidence), verdicts=summary, missing=missing)


def _model_shape(cfg) -> str:
  """The base model's shape and budget, so a regenerated section says which model it measured."""
  from rltf_jax.models.decoder import num_heads  # the decoder's own default (width // 64)
  m = cfg.model
  return (f"{int(m.num_layers)} layers of width {int(m.width)}, {num_heads(m)} attention heads, "
          f"{int(cfg.pretrain.steps):,} pretraining steps")


# ---------------------------------------------------------------------------- Table 2 (SCD, N x P)
TABLE2_SWEEP = "configs/sweeps/table2_ablation.py"
# The ablation's claims, each a paired difference of two of its rows on the same patients:
# (claim, row A, row B, metric). "Best at N = 10000, P = 0.5" is judged as its two comparisons.
TABLE2_CLAIMS = (
    ("More RL pairs raise F1 (N = 10000 minus N = 100, P = 0.5)", "rl-n10000-p0.5", "rl-n100-p0.5", "f1"),
    ("Balanced pairs beat all-positive ones (P = 0.5 minus P = 1.0, N = 10000): F1",
     "rl-n10000-p0.5", "rl-n10000-p1", "f1"),
    ("... and synthetic-data AUROC", "rl-n10000-p0.5", "rl-n10000-p1", "auroc_synthetic"),
    ("SFT lags RL (RL minus SFT, N = 10000, P = 0.5): F1", "rl-n10000-p0.5", "sft-n10000-p0.5", "f1"),
    ("... and ROUGE-1", "rl-n10000-p0.5", "sft-n10000-p0.5", "rouge1"),
)


def table2_runs(sweep: str, workdir: str | None) -> tuple[Path, dict, dict, list[str]]:
  """(work directory, {row name: eval dir}, {row name: its run's config}, missing rows) of the
  Table 2 sweep, each row at its first seed."""
  base_cfg, rows, _, seeds = load_sweep(sweep)
  root = pipeline.workdir_of(base_cfg, workdir)
  found, cfgs, missing = {}, {}, []
  for run in with_seeds(base_cfg, rows, seeds[:1]):
    cfg = apply_overrides(base_cfg, run.get("overrides", {}))
    cfg.run_name = run.get("run_name", run["name"])
    d = pipeline.cohort_dir_of(cfg, root) / "eval" / cfg.methods[0]
    cfgs[run["name"]] = cfg
    if (d / "metrics.json").exists() and (d / "per_patient.npz").exists():
      found[run["name"]] = d
    else:
      missing.append(run["name"])
  return root, found, cfgs, missing


def _differences(loaded: dict, samples: int, seed: int):
  """`difference(a, b, metric)`: row A minus row B on all patients (paired bootstrap), or None
  when they scored other patients; each pair of rows is bootstrapped once, for every metric."""
  done = {}

  def difference(a: str, b: str, metric: str) -> dict | None:
    if (a, b) not in done:
      x, y = loaded[a][1], loaded[b][1]
      same = np.array_equal(x["test_subject_id"], y["test_subject_id"])
      done[a, b] = paired_strata(x, y, samples, seed)["all"] if same else {}
    return done[a, b].get(metric)
  return difference


def table2_section(sweep: str = TABLE2_SWEEP, workdir: str | None = None) -> tuple[str, dict]:
  """RESULTS.md's Table 2 block, between its markers, and its numbers."""
  lines, data = table2_lines(sweep, workdir)
  return "\n".join([TABLE2_START] + lines + ["", TABLE2_END]), data


def table2_lines(sweep: str = TABLE2_SWEEP, workdir: str | None = None) -> tuple[list[str], dict]:
  """RESULTS.md's Table 2 block: every row beside the paper's, its differences from the base
  model, and a verdict per claim of the ablation."""
  root, found, cfgs, missing = table2_runs(sweep, workdir)
  lines = ["", "### Table 2: the number of pairs N and their positive fraction P (SCD)", "",
           f"From `rltf sweep --config={sweep}` in `{root}` (one training seed; base model: "
           f"{_model_shape(next(iter(cfgs.values())))}); each row "
           "fine-tunes the same base model and is evaluated on the same patients, so differences are "
           "paired. *Pairs used* is what the data gave (* where it could not give the requested N and P).", ""]
  if not found:
    return lines + ["Not run yet."], dict(missing=missing)
  loaded = {name: _load(d) for name, d in found.items()}
  m0 = next(iter(loaded.values()))[0]
  difference = _differences(loaded, int(m0["settings"]["bootstrap_samples"]), int(m0["settings"]["seed"]))
  if missing:
    lines += [f"**Not finished**: {', '.join(missing)}.", ""]
  header = ["Row", "N", "P", "Pairs used (pos + neg)", "Validation positives", "F1", "Recall",
            "ROUGE-1", "AUROC syn.", "Recall - base", "F1 - base", "Paper F1 / AUROC / ROUGE-1"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  data = dict(rows={}, claims={}, missing=missing)
  for name, (m, _) in loaded.items():
    cfg, t = cfgs[name], m["fidelity"]
    method = cfg.methods[0]
    training = m.get("training") or {}
    used = (f"{training['positive_pairs']} + {training['negative_pairs']}"
            + ("" if training.get("as_requested") else " *")) if "positive_pairs" in training else "-"
    vs_base = {}
    if "base" in loaded and name != "base":
      vs_base = {metric: difference(name, "base", metric) for metric in ("recall", "f1")}
    t2 = _paper_table2(cfg) if method != "base" else None
    row = dict(method=method, n=int(cfg.rltf.num_pairs), p=float(cfg.rltf.positive_fraction),
               f1=t["target"]["f1"]["value"], recall=t["target"]["recall"]["value"],
               rouge1=t["rouge1"]["value"], auroc_synthetic=m["utility"]["synthetic"]["auroc"]["value"],
               positives=t["target"]["counts"]["actual_positive"], vs_base=vs_base, paper=t2)
    data["rows"][name] = row
    f = lambda v, k=2: "n/a" if v is None else f"{v:.{k}f}"
    lines.append("| " + " | ".join([
        name, "-" if method == "base" else str(row["n"]), "-" if method == "base" else f"{row['p']:g}",
        used, str(row["positives"]), f(row["f1"]), f(row["recall"]), f(row["rouge1"], 3),
        f(row["auroc_synthetic"], 3), _fmt(vs_base.get("recall")), _fmt(vs_base.get("f1")),
        f"{t2['f1']:.2f} / {t2['auroc']:.2f} / {t2['rouge1']:.3f}" if t2 else "-"]) + " |")
  data["prompt_rule"] = _prompt_rule(next(iter(loaded.values()))[1])
  rule = data["prompt_rule"]
  lines += ["", f"A rule with no model, on the same patients: write the target exactly when the prompt has "
            f"it. Its F1 is {rule['f1']:.2f}, recall {rule['recall']:.2f} ({rule['true_positive']} of "
            f"{rule['actual_positive']}), precision {rule['precision']:.2f}: a row below it has learnt "
            "less about when the target continues than the prompt already shows."]
  lines += ["", "| Claim of the ablation | Ours (A - B, 95% interval) | Paper (A - B) | Verdict here |",
            "|---|---|---|---|"]
  for text, a, b, metric in TABLE2_CLAIMS:
    if a in loaded and b in loaded:
      diff = difference(a, b, metric)
      side = _side(diff)
      verdict = {"above": "holds", "below": "fails (the other way)"}.get(side, "undecided")
    else:
      diff, verdict = None, "not run yet"
    pa, pb = (_paper_table2(cfgs[r]) for r in (a, b))
    key = "auroc" if metric == "auroc_synthetic" else metric
    paper_diff = f"{pa[key] - pb[key]:+.2f}" if pa and pb else "-"
    data["claims"][text] = dict(difference=diff, verdict=verdict)
    lines.append(f"| {text} | {_fmt(diff, 3 if metric == 'rouge1' else 2)} | {paper_diff} | **{verdict}** |")
  return lines, data


def _prompt_rule(per_patient: dict) -> dict:
  """Precision, recall and F1 (population-weighted, as the rows') of predicting the target in the
  continuation exactly when the prompt holds it, on the scored patients, with its counts."""
  v = np.asarray(per_patient["test_validation"], bool)
  pred = np.asarray(per_patient["test_target_in_prompt"], bool)[v]
  true = np.asarray(per_patient["test_target_in_true"], bool)[v]
  w = per_patient["test_weight"][v] if "test_weight" in per_patient else None
  precision, recall, f1 = (float(x) for x in metrics.precision_recall_f1(pred, true, w)[0])
  return dict(precision=precision, recall=recall, f1=f1, true_positive=int((pred & true).sum()),
              actual_positive=int(true.sum()))


def _paper_table2(cfg) -> dict | None:
  method = cfg.methods[0]
  return paper.table2_row("RL" if method == "rltf" else "SFT", int(cfg.rltf.num_pairs),
                          float(cfg.rltf.positive_fraction))


def _plain(x):
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, Path):
    return str(x)
  if isinstance(x, np.generic):
    return x.item()
  return x


RESULTS_HEADER = ("# Results\n\nThe paper's claims on the simulator: the blocks between the markers are "
                  "regenerated by `rltf reproduce --results RESULTS.md` from finished sweeps; the "
                  "plain reading beside them is written by hand from those numbers.\n")


def splice(results: Path, section: str, start: str = START, end: str = END) -> None:
  """Replaces the results file's text from `start` to `end` (markers included) with `section`;
  a file that does not exist yet is created with both blocks' markers first."""
  if not results.exists():
    io.atomic_write_text(results, f"{RESULTS_HEADER}\n{START}\n{END}\n\n{TABLE2_START}\n{TABLE2_END}\n")
  text = results.read_text()
  pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
  if not pattern.search(text):
    raise DataError(f"{results} has no {start} ... {end} block to replace; add one where the section goes")
  io.atomic_write_text(results, pattern.sub(lambda _: section, text))


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="rltf reproduce", description=__doc__.split("\n\n")[0])
  p.add_argument("--sweep", default=DEFAULT_SWEEP,
                 help="the rare-cohort sweep ('' leaves the Reproduction block as it is)")
  p.add_argument("--workdir", default=None)
  p.add_argument("--table2", default=TABLE2_SWEEP,
                 help="the Table 2 sweep ('' leaves the Table 2 block as it is)")
  p.add_argument("--results", "--readme", dest="results", type=Path, default=None,
                 help="the results file whose blocks are replaced (RESULTS.md; --readme: deprecated)")
  args = p.parse_args(argv)
  if not (args.sweep or args.table2):
    raise DataError("reproduction: --sweep and --table2 are both empty; nothing to regenerate")
  written = []
  if args.table2:
    table2, table2_data = table2_section(args.table2, args.workdir)
  if args.sweep:
    root, found, missing = collect_runs(args.sweep, args.workdir)
    if not found:
      raise DataError(f"no finished evaluation of {args.sweep} under {root}; run "
                      f"`rltf sweep --config={args.sweep}` first")
    section, data = build_section(root, found, missing, args.sweep)
    out = sweep_dir(root, args.sweep)
    if args.table2:
      data["table2"] = _plain(table2_data)
    io.atomic_write_json(out / "reproduction.json", data)
    written.append(io.atomic_write_text(
        out / "reproduction.md", section + ("\n\n" + table2 if args.table2 else "") + "\n"))
  else:  # Table 2 alone: its files sit in its own sweep's directory
    out = sweep_dir(pipeline.workdir_of(load_sweep(args.table2)[0], args.workdir), args.table2)
    io.atomic_write_json(out / "reproduction_table2.json", _plain(table2_data))
    written.append(io.atomic_write_text(out / "reproduction_table2.md", table2 + "\n"))
  if args.results:
    if args.sweep:
      splice(args.results, section)
    if args.table2:
      splice(args.results, table2, TABLE2_START, TABLE2_END)
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  cli_main(main)
