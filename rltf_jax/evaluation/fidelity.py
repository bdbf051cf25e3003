"""Evaluator `fidelity`: does the generator write the target where the truth has it (one draw per
patient: the paper's precision, recall and F1, per stratum), how often (calibration), and how
close the rest of the continuation stays (ROUGE-1). Validation patients, design-weighted.

`fidelity` scores each generation cut to its first T events (length-matched), `fidelity_uncut`
the whole generation (up to `eval.max_new_events`).
"""

from __future__ import annotations

import numpy as np

from rltf_jax.evaluation import conditional, metrics


def _scores(in_prompt, in_true, in_generated, rouge_prf, B: int, seed: int, continuation: str,
            weights: np.ndarray) -> dict:
  strata = (("all", np.ones_like(in_prompt)), ("new_onset", ~in_prompt), ("repeat", in_prompt))
  w = weights
  return dict(
      target=metrics.target_fidelity(in_generated, in_true, B, seed, w),
      target_new_onset=metrics.target_fidelity(in_generated[~in_prompt], in_true[~in_prompt], B, seed,
                                               w[~in_prompt]),
      target_repeat=metrics.target_fidelity(in_generated[in_prompt], in_true[in_prompt], B, seed,
                                            w[in_prompt]),
      calibration={stratum: metrics.calibration_ratio(in_generated[m], in_true[m], B, seed, w[m])
                   for stratum, m in strata},
      rouge1=metrics.mean_ci(rouge_prf[:, 2], B, seed, w),
      rouge1_precision=metrics.mean_ci(rouge_prf[:, 0], B, seed, w),
      rouge1_recall=metrics.mean_ci(rouge_prf[:, 1], B, seed, w),
      weighted=bool(len(w) and np.ptp(w) > 0),
      population="validation", continuation=continuation)


def evaluate(plan, results: dict) -> tuple[dict, dict]:
  """{"fidelity", "fidelity_uncut"} and the per-patient target flags and ROUGE-1."""
  del results
  in_generated_uncut = plan.generated.patients_with_any(plan.cohort.codes)
  true_codes = conditional.code_sequences(plan.true)
  rouge = metrics.rouge1(true_codes, conditional.code_sequences(plan.cut))
  rouge_uncut = metrics.rouge1(true_codes, conditional.code_sequences(plan.generated))
  v, w = plan.valid, plan.weights[plan.valid]
  max_new = int(plan.cfg.max_new_events)
  out = dict(
      fidelity=_scores(plan.in_prompt[v], plan.in_true[v], plan.in_generated[v], rouge[v], plan.B,
                       plan.seed, f"first {plan.T} generated events", w),
      fidelity_uncut=_scores(plan.in_prompt[v], plan.in_true[v], in_generated_uncut[v], rouge_uncut[v],
                             plan.B, plan.seed, f"whole generation (at most {max_new} events)", w))
  arrays = dict(test_target_in_prompt=plan.in_prompt, test_target_in_true=plan.in_true,
                test_target_in_generated=plan.in_generated,
                test_target_in_generated_uncut=in_generated_uncut, test_rouge1_prf=rouge,
                test_rouge1_prf_uncut=rouge_uncut)
  return out, arrays
