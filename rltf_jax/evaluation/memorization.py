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
  memo["rouge1_matched"] = _matched_rouge(plan, rouge[:, 2])
  return dict(arrays, train_rouge1_prf=rouge, train_rouge1_prf_uncut=rouge_uncut)


def _matched_rouge(plan, rouge_train: np.ndarray) -> dict:
  """ROUGE-1 train against test like with like: the trained-on draw is cohort-heavy (the pairs'
  patients), the validation patients are not; per stratum, and the test side re-weighted to the
  draw's cohort share (`privacy.matched_means`)."""
  v = np.flatnonzero(plan.valid)
  true, cut = plan.true.select(v), plan.cut.select(v)
  rouge_test = metrics.rouge1(conditional.code_sequences(true), conditional.code_sequences(cut))[:, 2]
  train_member = plan.dataset.select(plan.trained_draw).patients_with_any(plan.cohort.codes)
  return privacy.matched_means(rouge_train, train_member, rouge_test,
                               plan.test.patients_with_any(plan.cohort.codes)[v], plan.B, plan.seed)


def _membership(plan) -> dict:
  """The attack on up to `num_membership_patients` members and as many non-members that differ
  from them only in membership (`_nonmembers`), in equal counts per cohort stratum
  (`privacy.matched_draw`)."""
  member_pool = plan.members if plan.members is not None else plan.dataset.select(plan.trained_pool)
  pool, weights, source = _nonmembers(plan, member_pool)
  return privacy.matched_membership_inference(
      plan.generator, member_pool, pool, plan.cohort.codes, int(plan.cfg.num_membership_patients),
      plan.B, plan.seed + 2, nonmember_weights=weights, source=source)


def _nonmembers(plan, member_pool) -> tuple:
  """(non-member pool, draw weights or None, in words): patients no method trained on (less the
  modelling set LSTM and HALO train on), from the population the members were drawn from. The
  fine-tunes' pair patients come from the enriched sample's pairs split, negatives drawn in
  proportion to their design weight: their non-members come from its evaluation split, drawn by
  the same weights (the enriched sample over-represents every rare cohort, not only this one).
  The base model's members (the training split) get the test split's patients; the baselines'
  (the modelling set) the other patients of its split."""
  dataset, design = plan.dataset, plan.design
  member_splits = np.unique(member_pool.split)
  weights = None
  if design is not None and design.pairs_split != "train" and set(member_splits) == {SPLITS.index(design.pairs_split)}:
    split, weights = design.eval_split, 1.0 / design.inclusion
  elif set(member_splits) == {SPLITS.index("train")}:
    split = "test"
  else:
    split = SPLITS[int(member_splits[0])] if len(member_splits) else "test"
  pool = dataset.split_indices(split)
  seen = np.concatenate([member_pool.subject_id, dataset.subject_id[plan.trained_pool],
                         plan.patients.model_subject_id])
  pool = pool[~np.isin(dataset.subject_id[pool], seen)]
  source = (f"the {split} split, less every method's training patients"
            + (", drawn by design weight" if weights is not None else ""))
  return dataset.select(pool), None if weights is None else weights[pool], source


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
