"""The report says what its numbers are: small values are not printed as the 0 convention, a
difference with an undefined side is undefined, each prevalence names its population, a real-record
AUROC far above the paper's is explained, and the rare tail is plotted on log axes."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rltf_jax.reporting import plots, report  # noqa: E402


def test_a_small_weighted_precision_is_not_printed_as_zero():
  # Two non-member false positives of weight 861 against 7 true positives of weight 1.
  precision = 7 / (7 + 2 * 861)
  assert report.ci_text(dict(value=precision, ci95=[0.0, 0.02]), 2) == "0.004 [0.00, 0.02]"
  assert report.ci_text(dict(value=0.0, ci95=[0.0, 0.0]), 2) == "0.00 [0.00, 0.00]"
  assert report.num_text(-2.2e-16, 3) == "-0.000"  # rounding noise stays zero
  assert report.num_text(0.75, 2) == "0.75"


def test_a_precision_difference_with_a_side_that_predicted_nothing_is_undefined():
  d = dict(precision=dict(value=0.75, ci95=[0.0, 1.0]), predicted_positive=[4, 0])
  assert report._precision_difference(d, "RLTF") == "undefined (base predicted no positive)"
  d["predicted_positive"] = [4, 2]
  assert report._precision_difference(d, "RLTF") == "0.75 [0.00, 1.00]"


def test_paired_strata_counts_each_sides_predictions():
  v = np.array([True, True, True, False])
  base = dict(test_validation=v, test_target_in_prompt=np.array([False, True, False, False]),
              test_target_in_true=np.array([True, True, False, False]),
              test_target_in_generated=np.zeros(4, bool), test_rouge1_prf=np.zeros((4, 3)))
  tuned = dict(base, test_target_in_generated=np.array([True, True, True, True]))
  out = report.paired_strata(tuned, base, 20, 0)
  assert out["all"]["predicted_positive"] == [3, 0]          # the validation patients only
  assert out["new_onset"]["predicted_positive"] == [2, 0]
  assert "undefined" in report._precision_difference(out["all"], "RLTF")


def test_each_prevalence_names_its_population():
  first = dict(settings=dict(min_prompt_events=1),
               cohort_definition=dict(paper_frequency_percent=0.036),
               patients=dict(population_member_estimate=0.00051),
               fidelity=dict(target=dict(true_prevalence=dict(value=0.00043))))
  text = report._prevalences(first)
  assert "0.036% of the paper's population" in text
  assert "0.051% of the patients long enough to evaluate (at least T + 1 events)" in text
  assert "last T events of an estimated 0.043%" in text
  assert report._source(dict(design=dict(split="eval"))).startswith("from the cohort-enriched")
  assert report._source(dict(design=dict(split="test"))) == "from the held-out test split"


def test_a_real_auroc_far_above_the_papers_is_explained():
  def results(auroc):
    return {"scd": {"base": dict(utility=dict(real=dict(auroc=dict(value=auroc))))}}
  assert "sickle-cell care pattern" in "\n".join(report._real_auroc_notes(results(0.98)))
  assert report._real_auroc_notes(results(0.60)) == []   # the paper's 0.58: nothing to explain


def test_rare_tail_is_log_scaled_keeps_zeros_and_marks_the_target():
  codes = np.array(["ICD10CM/D573", "ICD10CM/I10", "ICD10CM/E119", "ICD10CM/Z00"])
  real = np.array([0.0004, 0.30, 0.005, 0.002])
  syn = np.array([0.0, 0.25, 0.004, 0.0])
  fig, ax = plt.subplots()
  plots.rare_tail(ax, real, syn, codes, codes == "ICD10CM/D573")
  assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
  target, other = ax.collections[1].get_offsets(), ax.collections[0].get_offsets()
  floor = 0.5 * 0.0004
  assert np.allclose(target, [[0.0004, floor]])            # generated 0 sits on the floor line
  assert len(other) == 2                                    # I10 (30%) is not in the tail
  assert [t.get_text() for t in ax.texts] == ["D573"]
  plt.close(fig)
