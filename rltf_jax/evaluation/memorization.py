"""Evaluator `memorization`: does the generator repeat what it was trained on? Exact copies of
training continuations, ROUGE-1 on the patients it trained on against the validation patients'
(fidelity's), self-copies, and a white-box membership-inference attack (`privacy`)."""

from __future__ import annotations

import time

import numpy as np

from rltf_jax.data.events import SPLITS
from rltf_jax.evaluation import conditional, metrics, privacy


def _train_side(plan, memo: dict) -> dict:
  """Completes the trained-on draw's prompts and scores them (ROUGE-1, self-copies)."""
  arrays = dict(train_subject_id=plan.dataset.subject_id[plan.trained_draw],
                train_rouge1_prf=np.zeros((0, 3)), train_rouge1_prf_uncut=np.zeros((0, 3)))
  if not len(plan.trained_draw):
    return arrays
  B, seed, out = plan.B, plan.seed, plan.out
  train_prompts, train_true = conditional.truncate(plan.dataset.select(plan.trained_draw), plan.T)
  train_prompts.save(out / "train_prompts.npz")
  train_true.save(out / "train_true.npz")
  train_generated, plan.timing["generate_train_s"] = conditional.complete_cached(
      plan.generator, train_prompts, max_new_events=int(plan.cfg.max_new_events), seed=seed + 1,
      path=out / "train_generated.npz")
  train_cut = conditional.head(train_generated, plan.T)
  true_codes = conditional.code_sequences(train_true)
  rouge = metrics.rouge1(true_codes, conditional.code_sequences(train_cut))
  rouge_uncut = metrics.rouge1(true_codes, conditional.code_sequences(train_generated))
  memo["rouge1_train"] = metrics.mean_ci(rouge[:, 2], B, seed)
  memo["rouge1_train_uncut"] = metrics.mean_ci(rouge_uncut[:, 2], B, seed)
  memo["self_copy_train"] = privacy.self_copy_rate(train_cut, train_true, B, seed)
  return dict(arrays, train_rouge1_prf=rouge, train_rouge1_prf_uncut=rouge_uncut)


def _membership(plan) -> dict:
  """The attack on up to `num_membership_patients` members and test-split non-members."""
  dataset, n_mia = plan.dataset, int(plan.cfg.num_membership_patients)
  rng = np.random.default_rng(plan.seed + 2)
  member_pool = plan.members if plan.members is not None else dataset.select(plan.trained_pool)
  nonmember_pool = dataset.subset("test")
  # A baseline trained on the modelling set (test patients) has members inside the test split:
  # its non-members are the test patients it did not see.
  seen = np.union1d(member_pool.subject_id, dataset.subject_id[plan.trained_pool])
  nonmember_pool = nonmember_pool.select(~np.isin(nonmember_pool.subject_id, seen))
  pick = lambda ds: ds.select(np.sort(rng.choice(len(ds), min(n_mia, len(ds)), replace=False)))
  return privacy.membership_inference(plan.generator, pick(member_pool), pick(nonmember_pool),
                                      plan.B, plan.seed)


def evaluate(plan, results: dict) -> tuple[dict, dict]:
  """{"memorization"} and the trained-on draw's ROUGE-1 per patient."""
  t = time.perf_counter()
  B, seed, dataset, v = plan.B, plan.seed, plan.dataset, np.flatnonzero(plan.valid)
  memo = dict(rouge1_test=results.get("fidelity", {}).get("rouge1"),
              rouge1_test_uncut=results.get("fidelity_uncut", {}).get("rouge1"))
  # Reference continuations: the training split's and the method's own training patients'.
  reference_idx = np.union1d(np.flatnonzero(dataset.split == SPLITS.index("train")), plan.trained_pool)
  reference = dataset.select(reference_idx)
  reference = reference.select(conditional.eligible(reference, plan.T, int(plan.cfg.min_prompt_events)))
  _, train_continuations = conditional.truncate(reference, plan.T)
  memo["exact_copy_of_train_continuation"] = privacy.copy_rate(plan.cut.select(v), train_continuations,
                                                               B, seed)
  memo["real_test_equal_to_train_continuation"] = privacy.copy_rate(plan.true.select(v),
                                                                    train_continuations, B, seed)
  arrays = _train_side(plan, memo)
  memo["train_population"] = plan.trained_counts["source"]
  if int(plan.cfg.num_membership_patients) > 0:
    t_mia = time.perf_counter()
    memo["membership_inference"] = _membership(plan)
    plan.timing["membership_inference_s"] = time.perf_counter() - t_mia
  plan.timing["memorization_s"] = time.perf_counter() - t - plan.timing.get("generate_train_s", 0.0)
  return dict(memorization=memo), arrays
