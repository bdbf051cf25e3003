"""Turns a run's evaluations into `report.md`, a combined `metrics.json` and PNG plots.

  python -m rltf_jax.reporting.report RUN_DIR [--out DIR]

Every `metrics.json` under RUN_DIR written by `evaluate.evaluate_generator` (one per cohort and
method, e.g. `<workdir>/<cohort>/eval/<method>/metrics.json`) is collected; the report goes to
`RUN_DIR/report/` unless `--out` says otherwise, and is rewritten from those files on every call
(it holds nothing that is not derived from them). The paper's numbers (on its private data) are
printed beside ours wherever the paper reports the same cell.

This module writes the text; the figures are `plots.py`, the collected evaluations, their order and
labels `results.py`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from rltf_jax import io
from rltf_jax.errors import DataError, cli_main
from rltf_jax.evaluation import metrics, paper_numbers as paper
from rltf_jax.evaluation import privacy as privacy_attacks
from rltf_jax.reporting import forecast_report
from rltf_jax.reporting.plots import write_plots, write_privacy_plot
from rltf_jax.formatting import ci_text, num_text
from rltf_jax.reporting.results import PAPER_NOTE, cohort_of, collect, fmt, label, lookup

REPORT_VERSION = 7  # 7: named prevalences, small numbers, undefined precision differences, the rare-tail plot; 6: the forecast section leads; 5: the cohort definition line and the privacy plot; bump when the report's content changes, so finished runs rewrite it
FEW_POSITIVES = 10  # below this many positives a cohort's numbers get a caution in the summary


# ---------------------------------------------------------------- formatting
def _table(header: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def _paper_prf(cohort: str, method: str) -> str:
  cell = paper.prf(cohort, method)
  return paper.format_prf(cell) if cell else "-"


def _paper_auroc(table: dict, cohort: str, method: str) -> str:
  v = paper.auroc(table, cohort, method)
  return f"{v:.3f}" if v is not None else "-"


# ---------------------------------------------------------------- sections
def _design_sentence(first: dict) -> str:
  """Where the evaluated patients come from and what the weights do, in words."""
  d = first.get("design") or {}
  t = lookup(first, "patients", "test") or {}
  n, members = t.get("selected"), t.get("selected_members")
  if d.get("split") == "eval":
    where = (f"{n} patients evaluated from the cohort-enriched evaluation sample ({members} of them "
             "in the cohort, drawn first; the rest not)")
  else:
    where = f"{n} held-out (test-split) patients evaluated ({members} of them in the cohort, drawn first)"
  if not d.get("weighted"):
    return where + "; every patient counts once."
  lo, hi = d.get("validation_weight_range") or [None, None]
  return (where + ". Each patient is weighted by 1 / its inclusion probability (weights "
          f"{fmt(lo, 0)} to {fmt(hi, 0)}), so precision, F1, prevalences, calibration, ROUGE-1, AUROC "
          "and AUPRC estimate their values in the population, where the cohort is rare: "
          f"{_prevalences(first)}. Recall and the counts are shown unweighted too "
          f"(effective validation sample {fmt(d.get('validation_effective_patients'), 0)} patients).")


def _prevalences(first: dict) -> str:
  """The cohort's prevalence in each population a reader may mean, each named (they differ)."""
  s = first.get("settings") or {}
  parts = []
  paper_percent = lookup(first, "cohort_definition", "paper_frequency_percent")
  if paper_percent:
    parts.append(f"{paper_percent:g}% of the paper's population (its Table 4)")
  member = lookup(first, "patients", "population_member_estimate")
  if member is not None:
    parts.append(f"an estimated {num_text(100 * member, 3)}% of the patients long enough to evaluate "
                 f"(at least T + {s.get('min_prompt_events')} events)")
  target = lookup(first, "fidelity", "target", "true_prevalence", "value")
  if target is not None:
    parts.append(f"the target is in the last T events of an estimated {num_text(100 * target, 3)}% of "
                 "them (validation patients)")
  return "; ".join(parts) or "its prevalence was not recorded"


def _source(first: dict) -> str:
  """Which split the evaluated patients come from, in words."""
  if (lookup(first, "design", "split") or "test") == "eval":
    return "from the cohort-enriched evaluation sample, a split no training stage reads"
  return "from the held-out test split"


def _stratum_text(t: dict | None) -> str:
  if not t:
    return "n/a"
  c = t.get("counts", {})
  return (f"recall {fmt(lookup(t, 'recall', 'value'), 2)} ({c.get('true_positive')}/{c.get('actual_positive')}), "
          f"precision {num_text(lookup(t, 'precision', 'value'), 2)}, F1 {num_text(lookup(t, 'f1', 'value'), 2)}")


def _summary(results: dict, comparisons: dict) -> list[str]:
  """Plain sentences a reader can take away without reading the tables; acute cohorts lead with
  the new-onset stratum (the target is not in the prompt: the model must write it unprompted)."""
  out = []
  for cohort, ms in results.items():
    c = cohort_of(cohort, results)
    first = next(iter(ms.values()))
    n_valid = lookup(first, "patients", "validation")
    counts = lookup(first, "fidelity", "target", "counts") or {}
    new = lookup(first, "fidelity", "target_new_onset", "counts", "actual_positive") or 0
    rep = lookup(first, "fidelity", "target_repeat", "counts", "actual_positive") or 0
    out.append(f"**{c.abbrev} ({c.disease})**, {'an acute' if c.acute else 'a chronic'} cohort: "
               f"{_design_sentence(first)} The last {lookup(first, 'settings', 'truncate_events')} "
               f"events of each were regenerated; fidelity is scored on the {n_valid} validation "
               "patients, which no method trained on, with each generation cut to the true "
               f"continuation's length. {counts.get('actual_positive')} of their true continuations "
               f"contain the target: {new} new onset (no target in the prompt"
               + ("" if c.acute else "; for a chronic or congenital condition that is the first "
                  "*coding* in a short record, not incident disease") + f"), {rep} repeat.")
    strata = (("target_new_onset", "new onset"), ("target", "all"), ("target_repeat", "repeat")) if c.acute \
        else (("target", "all"), ("target_new_onset", "new onset"), ("target_repeat", "repeat"))
    for method, m in ms.items():
      parts = [f"{name}: {_stratum_text(lookup(m, 'fidelity', key))}" for key, name in strata]
      cal = lookup(m, "fidelity", "calibration", "new_onset" if c.acute else "all", "value")
      out.append(f"- {label(method)}: " + "; ".join(parts) +
                 f"; calibration ({'new onset' if c.acute else 'all'}) {fmt(cal, 2)}; ROUGE-1 "
                 f"{fmt(lookup(m, 'fidelity', 'rouge1', 'value'), 3)}; AUROC of a classifier trained on "
                 f"its synthetic records {fmt(lookup(m, 'utility', 'synthetic', 'auroc', 'value'), 3)}.")
    real = lookup(first, "utility", "real", "auroc", "value")
    out.append(f"- The same classifier trained on real records reaches AUROC {fmt(real, 3)}.")
    in_truth = counts.get("actual_positive") or 0
    in_valid = lookup(first, "utility", "validation", "positives") or 0
    lead = new if c.acute else in_truth
    if min(lead, in_valid) < FEW_POSITIVES:
      out.append(f"- **Caution**: only {lead} {'new-onset ' if c.acute else ''}true continuations "
                 f"contain the target and {in_valid} validation patients are in the cohort, so these "
                 "numbers rest on a handful of patients (see the intervals). Evaluate more patients "
                 "(`eval.num_test_patients`, `data.enrich.patients`) for firm numbers.")
    for pair, by_stratum in comparisons.get(cohort, {}).items():
      key = "new_onset" if c.acute else "all"
      d = by_stratum.get(key)
      if d:
        out.append(f"- {label(pair.split('-')[0])} minus base ({key.replace('_', ' ')}, paired): recall "
                   f"{ci_text(d['recall'], 2)}, F1 {ci_text(d['f1'], 2)}, ROUGE-1 {ci_text(d['rouge1'])}"
                   + (f"; synthetic-data AUROC (all) {ci_text(by_stratum['all'].get('auroc_synthetic'))}"
                      if by_stratum.get("all", {}).get("auroc_synthetic") else "") + ".")
    out.append("")
  return out


def _fidelity_section(results: dict) -> list[str]:
  rows = []
  for cohort, ms in results.items():
    for method, m in ms.items():
      t = lookup(m, "fidelity", "target") or {}
      counts = t.get("counts", {})
      rows.append([cohort_of(cohort, results).abbrev, label(method), ci_text(t.get("precision"), 2),
                   ci_text(t.get("recall"), 2), ci_text(t.get("f1"), 2),
                   f"{counts.get('true_positive', 0)}/{counts.get('predicted_positive', 0)}/"
                   f"{counts.get('actual_positive', 0)}",
                   ci_text(lookup(m, "fidelity", "rouge1")), _unweighted(t), _paper_prf(cohort, method)])
  rouge_paper = ", ".join(f"{k} {v:.3f}" for k, v in paper.ROUGE1_AVERAGE.items())
  return [
      "## 1. Generating the target (the paper's Tables 1 and 5)", "",
      f"Scored on the {_population(results)}. "
      "Each held-out patient's last T events are removed and regenerated from the rest; the numbers "
      "are *length-matched*: a generated continuation counts with its first T events, as long as the "
      "true one (the uncut generation is in the second table). *Precision*: "
      "of the patients whose generated continuation contains a target code, the fraction whose true "
      "continuation does too; *recall*: of the patients whose true continuation contains one, the "
      "fraction whose generated continuation does. When a method never generates the target, "
      "precision is 0 by convention (the paper prints 0.00 too). *TP/pred/true* are the counts behind "
      "them. ROUGE-1 compares the generated with the true continuation, codes as words (F-measure, "
      "mean over patients). Brackets: 95% bootstrap intervals over patients. Where the evaluated "
      "patients come from an enriched sample, every number is weighted back to the population "
      "(see the summary) and *unweighted P/R/F1* gives the sample's own values beside them.", "",
      _table(["Cohort", "Method", "Precision", "Recall", "F1", "TP/pred/true", "ROUGE-1",
              "Unweighted P/R/F1", f"P/R/F1 ({PAPER_NOTE})"], rows), "",
      f"ROUGE-1 averaged over the paper's cohorts ({PAPER_NOTE}): {rouge_paper} "
      "(CHIRON is the paper's base model, DPO its RLTF model).", "",
      "The same on the uncut generations (up to `max_new_events`), with their mean length against "
      "the true continuations' T events:", "",
      _table(["Cohort", "Method", "Precision", "Recall", "F1", "TP/pred/true", "ROUGE-1",
              "Mean generated events"],
             [[cohort_of(c, results).abbrev, label(meth),
               ci_text(lookup(m, "fidelity_uncut", "target", "precision"), 2),
               ci_text(lookup(m, "fidelity_uncut", "target", "recall"), 2),
               ci_text(lookup(m, "fidelity_uncut", "target", "f1"), 2),
               "/".join(str(lookup(m, "fidelity_uncut", "target", "counts", k)) for k in
                        ("true_positive", "predicted_positive", "actual_positive")),
               ci_text(lookup(m, "fidelity_uncut", "rouge1")),
               fmt(lookup(m, "generation", "mean_generated_events"), 1)]
              for c, ms in results.items() for meth, m in ms.items()]), "",
      "Patients whose prompt does not already contain the target (new onset only):", "",
      _table(["Cohort", "Method", "Precision", "Recall", "F1", "TP/pred/true"],
             [[cohort_of(c, results).abbrev, label(meth),
               ci_text(lookup(m, "fidelity", "target_new_onset", "precision"), 2),
               ci_text(lookup(m, "fidelity", "target_new_onset", "recall"), 2),
               ci_text(lookup(m, "fidelity", "target_new_onset", "f1"), 2),
               "/".join(str(lookup(m, "fidelity", "target_new_onset", "counts", k)) for k in
                        ("true_positive", "predicted_positive", "actual_positive"))]
              for c, ms in results.items() for meth, m in ms.items()]), ""]


def _utility_section(results: dict) -> list[str]:
  rows = []
  for cohort, ms in results.items():
    first = next(iter(ms.values()))
    real = lookup(first, "utility", "real")
    rows.append([cohort_of(cohort, results).abbrev, "Real", ci_text(lookup(real, "auroc")),
                 _paper_auroc(paper.TABLE6, cohort, "real"), "-", "-", ci_text(lookup(real, "auprc")), "-"])
    prompt = lookup(first, "utility", "prompt_only")
    if prompt:
      rows.append([cohort_of(cohort, results).abbrev, "Prompts only (control)", ci_text(lookup(prompt, "auroc")),
                   "-", "-", "-", ci_text(lookup(prompt, "auprc")),
                   f"{lookup(prompt, 'train_positives')}/{lookup(prompt, 'train_patients')}"])
    for method, m in ms.items():
      syn, aug = lookup(m, "utility", "synthetic"), lookup(m, "utility", "augmentation")
      note = " (one class: constant)" if lookup(syn, "constant_scorer") else ""
      rows.append([cohort_of(cohort, results).abbrev, label(method), ci_text(lookup(syn, "auroc")) + note,
                   _paper_auroc(paper.TABLE6, cohort, method), ci_text(lookup(aug, "auroc")),
                   _paper_auroc(paper.TABLE7, cohort, method), ci_text(lookup(syn, "auprc")),
                   f"{lookup(syn, 'train_positives')}/{lookup(syn, 'train_patients')}"])
  first = next(iter(next(iter(results.values())).values()))
  v = lookup(first, "utility", "validation") or {}
  return [
      "## 2. Machine-learning utility (the paper's Tables 6 and 7)", "",
      "The held-out patients are split 70/30 (stratified, seeded) into a modelling and a validation "
      "set. CatBoost learns cohort membership from per-patient counts of every non-target code. "
      "*Real*: trained on the modelling patients' real records. *Synthetic*: trained on the modelling "
      "patients' prompts completed by the method (features and label from prompt + generated "
      "continuation). *Augmented*: trained on both. All are scored on the real validation set "
      f"({v.get('patients')} patients, {v.get('positives')} positive, {v.get('features')} features). "
      "A synthetic set without positive patients cannot train a classifier; it scores as a constant "
      "(AUROC 0.5). *Synthetic positives* counts the positive rows the synthetic classifier saw.", "",
      "*Prompts only* trains the same classifier on the modelling patients' prompts with no "
      "continuation: the part of a synthetic record's signal that is real history, not generated. "
      "Synthetic rows are length-matched (first T generated events).", "",
      _table(["Cohort", "Trained on", "AUROC synthetic", f"Table 6 ({PAPER_NOTE})",
              "AUROC augmented", f"Table 7 ({PAPER_NOTE})", "AUPRC synthetic",
              "Synthetic positives/rows"], rows), "",
      *_real_auroc_notes(results),
      "Labels of the modelling patients, real record against synthetic record (counts; *in prompt*: "
      "real positives whose prompt already holds the target):", "",
      _table(["Cohort", "Method", "real +, synthetic +", "real +, synthetic -", "real -, synthetic +",
              "real -, synthetic -", "real + in prompt"],
             [[cohort_of(c, results).abbrev, label(meth),
               *[str(lookup(m, "utility", "label_table", r, k)) for r, k in
                 (("real_positive", "synthetic_positive"), ("real_positive", "synthetic_negative"),
                  ("real_negative", "synthetic_positive"), ("real_negative", "synthetic_negative"))],
               str(lookup(m, "utility", "label_table", "target_in_prompt"))]
              for c, ms in results.items() for meth, m in ms.items()]), ""]


def _real_auroc_notes(results: dict) -> list[str]:
  """Why a cohort's real-record AUROC sits far above the paper's, where it does."""
  notes = []
  for cohort, ms in results.items():
    real = lookup(next(iter(ms.values())), "utility", "real", "auroc", "value")
    theirs = paper.auroc(paper.TABLE6, cohort, "real")
    if real is None or theirs is None or real - theirs <= 0.1:
      continue
    why = (" On the simulator this is by design for SCD: most SCD patients carry the sickle-cell "
           "care pattern (crises, hydroxyurea, emergency visits), which a classifier cannot miss; "
           "the calibration of the other cohorts to Table 6 leaves SCD out "
           "(`rltf_jax/configs/simulator.py`)." if cohort == "scd" else "")
    notes += [f"*{cohort_of(cohort, results).abbrev}*: the real-record AUROC ({fmt(real, 2)}) is far above "
              f"the paper's ({fmt(theirs, 2)}): the cohort's members are much easier to tell from "
              "their history here than in the paper's claims data, so a synthetic-data AUROC near "
              f"the real one says less than in the paper.{why}", ""]
  return notes


def _memorization_section(results: dict) -> list[str]:
  rows = []
  for cohort, ms in results.items():
    for method, m in ms.items():
      mem = m.get("memorization", {})
      col = paper.paper_column(method)
      p3 = paper.TABLE3.get(col) if col else None
      rows.append([cohort_of(cohort, results).abbrev, label(method), ci_text(mem.get("rouge1_train")),
                   ci_text(mem.get("rouge1_test")),
                   f"{p3['train']:.3f} / {p3['test']:.3f}" if p3 else "-",
                   ci_text(mem.get("exact_copy_of_train_continuation")),
                   ci_text(mem.get("real_test_equal_to_train_continuation")),
                   ci_text(mem.get("self_copy_train")),
                   ci_text(mem.get("membership_inference")) if lookup(mem, "membership_inference", "value")
                   is not None else (lookup(mem, "membership_inference", "reason") or "n/a")])
  return [
      "## 3. Memorization and privacy (the paper's Table 3, and beyond)", "",
      "*ROUGE-1 train / test*: the same conditional generation on training patients and on held-out "
      "patients; a much higher training score would mean the model reproduces what it saw. "
      "*Copies a training continuation*: fraction of generated test continuations equal, code for "
      "code, to the last T events of some training patient; *real test rate* is the same fraction for "
      "the held-out patients' real continuations (coincidences between unrelated real patients), the "
      "level a non-memorizing model should stay near. *Reproduces own continuation*: on training "
      "prompts, the fraction of generations identical to that patient's true continuation. "
      "*Membership AUC*: a log-likelihood-per-event threshold attack separating training from held-out "
      "patients; 0.5 means it cannot tell them apart.", "",
      _table(["Cohort", "Method", "ROUGE-1 train", "ROUGE-1 test", f"Table 3 train/test ({PAPER_NOTE})",
              "Copies a training continuation", "Real test rate", "Reproduces own continuation",
              "Membership AUC"], rows), ""]


def _definition_lines(run_dir: Path) -> list[str]:
  """A user-defined cohort's resolved definition (`cohort.json`, written by the pipeline): its code
  count and, with the ICD-9-CM mapping, how many patients match only through the mapped codes."""
  lines = []
  for path in sorted(run_dir.glob("**/cohort.json")):
    rec = json.loads(path.read_text())
    c, gem = rec.get("cohort", {}), rec.get("icd9_gem")
    text = (f"Cohort `{c.get('name')}` is the user definition `{rec.get('definition')}`, resolved to "
            f"{len(c.get('codes', []))} codes of the data.")
    if gem:
      text += (f" The ICD-9-CM General Equivalence Mapping ({gem['table']}) added {gem['codes']} of "
               f"them; {gem['patients_only_via_mapping']} patients match only through those.")
    aces = rec.get("aces")
    if aces and "members" in aces:
      text += (f" Its labels are es-aces's: {aces['members']} patients with predicate "
               f"`{aces['predicate']}` true on a row of the source ({aces['members_by_code_set']} have "
               f"a code of the code set, which training and evaluation use; {aces['disagree']} differ).")
    lines += [text, ""]
  return lines


def _released_privacy_section(run_dir: Path, out: Path, results: dict) -> tuple[list[str], dict]:
  """The privacy and fidelity suite on each method's released records (`privacy/privacy.json`,
  written by the pipeline's privacy stage), with the copy and marginals anchors."""
  from rltf_jax.evaluation import dataset_privacy
  found = {}
  plots = {}
  for path in sorted(run_dir.rglob(f"privacy/{dataset_privacy.RUN_FILE}")):
    rec = json.loads(path.read_text())
    found[rec["cohort"]] = rec
    plots[rec["cohort"]] = write_privacy_plot(path.parent, cohort_of(rec["cohort"], results), out)
  if not found:
    return [], {}
  lines = ["### Privacy and fidelity of the released records", "",
           "Each method's *released records*: half of the evaluated patients (drawn within cohort members "
           "and within non-members), each its real prompt with the method's generated continuation (cut to "
           "the true continuation's length), as `synthesize --mode continue` would release them; the "
           "*holdout* is the other half's real records (prompt + true continuation): patients no method "
           "trained on, whose prompts no released record holds. Patients are code sets and distances "
           "Jaccard distances (`rltf_jax/evaluation/dataset_privacy.py`). The *reference* patients are "
           "the fine-tune's training patients (its preference pairs), the same for every row: the base "
           "model never saw them, so its row is the level of a generator that did not train on them. Anchors: "
           "*copy* releases the reference records themselves (the worst privacy), *marginals* draws each "
           "code independently at its reference prevalence (little risk, weak fidelity). Read each "
           "method against the two: DCR (distance to the closest reference record) near the holdout's "
           "and NNAA privacy loss, membership AUC and the attribute-inference gap near 0 / 0.5 / 0 mean "
           "no leak. *cohort* rows restrict every set to patients with a target code.", ""]
  for name, rec in found.items():
    n = rec["patients"]
    lines += [f"{cohort_of(name, results).abbrev}: {n['released']} released records ({n['released_members']} in "
              f"the cohort), {n['reference']} reference patients ({rec['reference_source']}; "
              f"{n['reference_members']} in the cohort), {n['holdout']} holdout patients "
              f"({n['holdout_members']} in the cohort).", "",
              rec.get("reason") or dataset_privacy.privacy_table(rec["results"]), ""]
    if plots.get(name):
      lines += [f"![privacy]({plots[name]})", ""]
  return lines, found


def _prevalence_section(results: dict, plots: list[str]) -> list[str]:
  rows = []
  for cohort, ms in results.items():
    for method, m in ms.items():
      p = m.get("prevalence", {})
      rec, cont = p.get("records", {}), p.get("continuations", {})
      rows.append([cohort_of(cohort, results).abbrev, label(method), ci_text(cont.get("pearson_r")),
                   ci_text(cont.get("r2_identity")), ci_text(rec.get("pearson_r")), ci_text(rec.get("r2_identity")),
                   f"{ci_text(cont.get('cohort_real'), 4)} / {ci_text(cont.get('cohort_synthetic'), 4)}",
                   f"{ci_text(rec.get('cohort_real'), 4)} / {ci_text(rec.get('cohort_synthetic'), 4)}"])
  return [
      "## 4. Prevalence fidelity (beyond the paper)", "",
      "Per-code prevalence (fraction of patients with the code) in synthetic vs real data, over the "
      "codes seen in either. *Continuations* compares generated with true continuations (what the "
      "model wrote); *records* compares prompt + continuation (what a user receives; the shared "
      "prompts make agreement look better). R^2 is measured on the identity line (synthetic as a "
      "prediction of real), so a systematic over- or under-generation lowers it even when r is high. "
      "The cohort columns give the fraction of patients in the cohort, real / synthetic.", "",
      _table(["Cohort", "Method", "r (contin.)", "R^2 (contin.)", "r (records)", "R^2 (records)",
              "Cohort prev. contin. real/syn", "Cohort prev. records real/syn"], rows), "",
      *[f"![prevalence]({p})" for p in plots], ""]


def _ablation_section(results: dict) -> list[str]:
  if "scd" not in results:
    return []
  ms = results["scd"]
  rows = []
  for method, train in (("rltf", "RL"), ("sft", "SFT")):
    if method in ms:
      m = ms[method]
      ref = paper.table2_row(train, 10000, 0.5)
      t = m.get("training", {})
      rows.append([label(method), _pairs_cell(t), fmt(lookup(m, "fidelity", "target", "f1", "value"), 2),
                   fmt(lookup(m, "utility", "synthetic", "auroc", "value"), 2),
                   fmt(lookup(m, "fidelity", "rouge1", "value")),
                   f"{ref['f1']:.2f} / {ref['auroc']:.2f} / {ref['rouge1']:.3f}" if ref else "-"])
  if not rows:
    return []
  return ["## 5. RLTF vs SFT on sickle-cell disease (the paper's Table 2, default row and SFT)", "",
          "*Pairs* are the pairs the method trained on, positive + negative, with the request "
          "(`rltf.num_pairs`, `rltf.positive_fraction`) beside them when the data could not meet it "
          "(marked *); the paper's row is N = 10000, P = 0.5.", "",
          _table(["Method", "Pairs (pos + neg)", "F1", "AUROC synthetic", "ROUGE-1",
                  f"F1 / AUROC / ROUGE-1 ({PAPER_NOTE})"], rows), ""]


def paired_comparisons(results: dict) -> dict:
  """{cohort: {"rltf-base": {stratum: difference}, ...}}: each fine-tune minus the base model on the
  same validation patients (`metrics.paired_difference`, from the evaluations' per_patient.npz,
  with their design weights), overall and for new-onset and repeat patients; overall also the
  synthetic-data AUROC difference (`metrics.paired_auroc_difference`)."""
  out = {}
  for cohort, ms in results.items():
    if "base" not in ms:
      continue
    base = io.load_npz(Path(ms["base"]["_dir"]) / "per_patient.npz")
    s = ms["base"]["settings"]
    for method in [m for m in ms if m != "base"]:
      other = io.load_npz(Path(ms[method]["_dir"]) / "per_patient.npz")
      if not (np.array_equal(base["test_subject_id"], other["test_subject_id"])
              and "test_validation" in base and "test_validation" in other):
        continue  # not the same patients (or an older evaluation): no paired comparison
      out.setdefault(cohort, {})[f"{method}-base"] = paired_strata(
          other, base, int(s["bootstrap_samples"]), int(s["seed"]))
  return out


def paired_strata(a, b, num_samples: int, seed: int, extra: list | None = None) -> dict:
  """A minus B (two per_patient.npz of the same patients) per stratum; `extra`: further (A, B)
  pairs of the same patients (other seeds), averaged with the first inside each resample."""
  pairs = [(a, b)] + list(extra or [])
  v = b["test_validation"]
  w = b["test_weight"][v] if "test_weight" in b else None
  in_prompt = b["test_target_in_prompt"][v]
  strata = dict(all=np.ones(int(v.sum()), bool), new_onset=~in_prompt, repeat=in_prompt)
  out = {}
  for name, m in strata.items():
    out[name] = metrics.paired_difference(
        [x["test_target_in_generated"][v][m] for x, _ in pairs],
        [y["test_target_in_generated"][v][m] for _, y in pairs], b["test_target_in_true"][v][m],
        [x["test_rouge1_prf"][v][m][:, 2] for x, _ in pairs],
        [y["test_rouge1_prf"][v][m][:, 2] for _, y in pairs], num_samples, seed,
        None if w is None else w[m])
    # Patients each side predicted positive (the fewest over seeds): 0 leaves precision undefined.
    out[name]["predicted_positive"] = [
        min(int(x["test_target_in_generated"][v][m].sum()) for x, _ in pairs),
        min(int(y["test_target_in_generated"][v][m].sum()) for _, y in pairs)]
  if all("utility_scores_synthetic" in x and "utility_scores_synthetic" in y for x, y in pairs):
    labels = (b["test_target_in_prompt"] | b["test_target_in_true"])[v]
    out["all"]["auroc_synthetic"] = metrics.paired_auroc_difference(
        [x["utility_scores_synthetic"] for x, _ in pairs], [y["utility_scores_synthetic"] for _, y in pairs],
        labels, num_samples, seed, w)
  return out


def _comparison_section(results: dict, comparisons: dict) -> list[str]:
  rows = []
  for cohort, by_pair in comparisons.items():
    for pair, strata in by_pair.items():
      method = pair.split("-")[0]
      for stratum, d in strata.items():
        rows.append([cohort_of(cohort, results).abbrev, f"{label(method)} - base", stratum.replace("_", " "),
                     f"{d['actual_positive']}/{d['patients']}", ci_text(d["recall"], 2), ci_text(d["f1"], 2),
                     _precision_difference(d, label(method)), ci_text(d["rouge1"]),
                     ci_text(d.get("auroc_synthetic")) if "auroc_synthetic" in d else "-"])
  cal = []
  for cohort, ms in results.items():
    for method, m in ms.items():
      c = lookup(m, "fidelity", "calibration")
      if not c:
        continue  # an evaluation made before calibration was measured
      rouge = stratum_rouge(m)
      cal.append([cohort_of(cohort, results).abbrev, label(method)] +
                 [f"{ci_text(c.get(k), 2)} ({lookup(c, k, 'generated')}/{lookup(c, k, 'true')})"
                  for k in ("all", "new_onset", "repeat")] +
                 [ci_text(rouge.get(k)) for k in ("new_onset", "repeat")])
  if not rows and not cal:
    return []
  return ["## 1b. Against the base model, by stratum, and calibration", "",
          "Each fine-tune minus the base model on the same validation patients, with a paired "
          "bootstrap (one resample of patients scores both). *New onset*: patients whose prompt holds "
          "no target code; *repeat*: the prompt already holds one, so generating it again mostly "
          "re-emits a code the prompt shows. *Positives/patients*: true continuations with the "
          "target among the stratum's patients. *AUROC synthetic*: the difference of the synthetic-data "
          "classifiers' AUROC on the same real validation patients. Weighted by the design weights "
          "where the evaluation has them. An interval that contains 0 is no evidence of a "
          "difference. A precision difference is undefined where either side predicted no "
          "positive.", "",
          _table(["Cohort", "Difference", "Stratum", "Positives/patients", "Recall", "F1", "Precision",
                  "ROUGE-1", "AUROC synthetic"], rows), "",
          "*Calibration*: target prevalence in the generated continuations over that in the true ones "
          "(1 = as often as the truth; counts generated/true in brackets), length-matched, validation "
          "patients, design-weighted (one false positive among heavily weighted non-members moves it "
          "far). ROUGE-1 per stratum beside it (overall: section 1).", "",
          _table(["Cohort", "Method", "Calibration all", "New onset", "Repeat", "ROUGE-1 new onset",
                  "ROUGE-1 repeat"], cal), ""]


def _precision_difference(d: dict, method: str) -> str:
  """A precision difference, or why there is none: precision is undefined for a side that
  predicted no positive (its 0 is a convention), so the difference is too."""
  predicted = d.get("predicted_positive")
  if predicted and min(predicted) == 0:
    who = [name for name, n in zip((method, "base"), predicted) if n == 0]
    return f"undefined ({' and '.join(who)} predicted no positive)"
  return ci_text(d["precision"], 2)


def stratum_rouge(m: dict) -> dict:
  """Mean ROUGE-1 (design-weighted) of the validation patients per stratum, from per_patient.npz."""
  path = Path(m["_dir"]) / "per_patient.npz"
  if not path.exists():
    return {}
  pp = io.load_npz(path)
  if "test_validation" not in pp:
    return {}
  v = pp["test_validation"]
  w = pp["test_weight"][v] if "test_weight" in pp else None
  in_prompt = pp["test_target_in_prompt"][v]
  rouge = pp["test_rouge1_prf"][v][:, 2]
  B, seed = int(m["settings"]["bootstrap_samples"]), int(m["settings"]["seed"])
  return {name: metrics.mean_ci(rouge[mask], B, seed, None if w is None else w[mask])
          for name, mask in (("new_onset", ~in_prompt), ("repeat", in_prompt))}


def _pairs_cell(training: dict) -> str:
  """Achieved pairs, and the request where it differs (marked *)."""
  pos, neg = training.get("positive_pairs"), training.get("negative_pairs")
  if pos is None:
    return "-"
  cell = f"{pos} + {neg}"
  if not training.get("as_requested", True):
    cell += (f" * (asked {training.get('requested_pairs')} at "
             f"P = {training.get('requested_positive_fraction')})")
  return cell


def _unweighted(t: dict) -> str:
  u = t.get("unweighted")
  if not u:
    return "= weighted" if t else "-"
  return "/".join(fmt(lookup(u, k, "value"), 2) for k in ("precision", "recall", "f1"))


def _population(results: dict) -> str:
  """Who fidelity is scored on, in words, with the count."""
  first = next(iter(next(iter(results.values())).values()))
  n = lookup(first, "patients", "validation")
  split = lookup(first, "design", "split") or "test"
  where = "the enriched evaluation sample" if split == "eval" else "the held-out split"
  return (f"{n} validation patients of {where} (the 30% no method trains on; the LSTM "
          "and HALO baselines train on the other 70%)")


def _generation_section(results: dict) -> list[str]:
  rows = []
  for cohort, ms in results.items():
    for method, m in ms.items():
      g, t = m.get("generation", {}), m.get("timing", {})
      rows.append([cohort_of(cohort, results).abbrev, label(method), fmt(g.get("mean_true_events"), 1),
                   fmt(g.get("mean_generated_events"), 1), fmt(g.get("empty_generated_fraction"), 3),
                   fmt(g.get("max_new_events_reached_fraction"), 3),
                   fmt(t.get("generate_test_s"), 1), fmt(t.get("total_s"), 1)])
  return ["## 6. Generation and cost", "",
          "Mean events per true and generated continuation, the fraction of empty generations and of "
          "generations cut at the `max_new_events` budget, and seconds spent (0 s of generation means "
          "the continuations were read back from an earlier run).", "",
          _table(["Cohort", "Method", "True events", "Generated events", "Empty", "Hit budget",
                  "Generation s", "Total eval s"], rows), ""]


# ---------------------------------------------------------------- entry points
def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
  """Writes report.md, metrics.json and the plots; returns the report's path."""
  run_dir = Path(run_dir)
  if not run_dir.is_dir():
    raise DataError(f"{run_dir} is not a directory; pass the run directory that holds the evaluations")
  out = Path(out_dir) if out_dir else run_dir / "report"
  results = collect(run_dir, skip=out)
  out.mkdir(parents=True, exist_ok=True)
  plots = write_plots(results, out)
  comparisons = paired_comparisons(results)
  first = next(iter(next(iter(results.values())).values()))
  s = first.get("settings", {})
  released_privacy, privacy = _released_privacy_section(run_dir, out, results)
  lines = [
      "# RLTF evaluation report", "",
      f"Run directory: `{run_dir}`. Cohorts: {', '.join(cohort_of(c, results).abbrev for c in results)}. "
      f"Methods: {', '.join(sorted({label(m) for ms in results.values() for m in ms}))}.", "",
      f"How the numbers were made: each evaluated patient ({_source(first)}) with at least "
      f"T + {s.get('min_prompt_events')} events (T = {s.get('truncate_events')}) loses its last T events; "
      "the method continues the remaining prompt (at most "
      f"{s.get('max_new_events')} new events, temperature {s.get('temperature')}, top-k "
      f"{s.get('top_k')}, top-p {s.get('top_p')}); the continuation is compared with the truth. "
      "Intervals are 95% percentile bootstrap intervals over patients (over codes for the "
      f"prevalence r and R^2; {s.get('bootstrap_samples')} resamples). The paper's numbers come from a private claims "
      "database and a much larger base model, so only the *shape* should carry over: fine-tuning "
      "should raise the target's recall far above the base model's, leave ROUGE-1 about where it was, "
      "and bring synthetic-data AUROC closer to the real-data AUROC.", "",
      *_definition_lines(run_dir),
      *forecast_report.forecast_section(results, forecast_report.write_reliability_plot(results, out)),
      "## Summary", "", *_summary(results, comparisons),
      *_fidelity_section(results),
      *[f"![recall and F1]({p})" for p in plots["fidelity"]], "",
      *_comparison_section(results, comparisons),
      *_utility_section(results),
      *[f"![AUROC]({p})" for p in plots["utility"]], "",
      *_memorization_section(results),
      *privacy_attacks.membership_lines(results),
      *privacy_attacks.dp_lines(results),
      *released_privacy,
      *privacy_attacks.strongest_lines(results, privacy),
      *_prevalence_section(results, plots["prevalence"]),
      *_ablation_section(results),
      *_generation_section(results),
      "## Files", "",
      "Each evaluation folder holds `metrics.json` (every number above), the prompts and the true and "
      "generated continuations (`*_prompts.npz`, `*_true.npz`, `*_generated.npz`, loadable with "
      "`PatientEvents.load`), `per_patient.npz` (target flags and ROUGE-1 per patient), "
      "`utility.npz` (count matrices, labels, subject ids; `rltf utility utility.npz` reruns the "
      "classifiers) and `prevalence.npz`. This report is regenerated by "
      f"`rltf report {run_dir}`.", "",
      "Evaluations read: " + ", ".join(f"`{m['_dir']}`" for ms in results.values() for m in ms.values()),
      ""]
  combined = dict(kind="rltf_jax.report", comparisons=comparisons, cohorts={
      c: {meth: {k: v for k, v in m.items() if k != "_dir"} | {"source": m["_dir"]}
          for meth, m in ms.items()} for c, ms in results.items()},
      paper=dict(table5={c: paper.TABLE5.get(c) for c in results},
                 table6={c: paper.TABLE6.get(c) for c in results},
                 table7={c: paper.TABLE7.get(c) for c in results},
                 table3=paper.TABLE3, rouge1_average=paper.ROUGE1_AVERAGE,
                 note="the paper's numbers, on its private data"),
      released_privacy={c: rec["results"] | {"patients": rec["patients"]} for c, rec in privacy.items()})
  io.atomic_write_json(out / "metrics.json", combined)
  return io.atomic_write_text(out / "report.md", "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description="Write report.md, metrics.json and plots for a run.")
  p.add_argument("run_dir", type=Path, help="folder holding the evaluations (searched recursively)")
  p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR/report)")
  args = p.parse_args(argv)
  path = write_report(args.run_dir, args.out)
  print(path)
  return 0


if __name__ == "__main__":
  cli_main(main)
