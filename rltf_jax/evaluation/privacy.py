"""Memorization and privacy checks.

* Train vs test ROUGE-1 (the paper's Table 3): the same conditional generation on training patients
  and on held-out patients; a much higher training score means the model reproduces what it saw.
* Exact copies (beyond the paper): the fraction of generated continuations whose code sequence
  equals the true continuation (last T events) of some training patient, next to the same rate for
  the held-out patients' real continuations (how often real, unrelated patients collide by chance),
  and the fraction of training-prompt generations that reproduce that patient's own continuation.
* Membership inference (beyond the paper): a threshold attack that calls a patient a training
  member when the model's per-token log-likelihood of their record is high. Its AUC over training
  vs held-out patients is 0.5 when the model leaks nothing and 1.0 when members are recognisable.
  The score is `log_likelihood(record) / number of tokens it scored`
  (`Generator.scored_log_likelihood`), so that long records are not penalised for their length: a
  model that reads only a window of a record (the transformer's `max_prompt_len` tokens) sums over
  that window, not over every event. A generator without `scored_log_likelihood` is taken to score
  each event once (the score is then divided by the number of events, and the result says so).
"""

from __future__ import annotations

import logging
import numpy as np

from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import metrics
from rltf_jax.evaluation.conditional import common_codes, recode

log = logging.getLogger(__name__)


def sequence_keys(ds: PatientEvents, codes: np.ndarray) -> list[bytes]:
  """One hashable key per patient: the bytes of its code indices in the table `codes` (compact
  enough for a million training continuations, unlike tuples of strings)."""
  idx = recode(ds, codes).code.astype(np.int32)
  return [idx[a:b].tobytes() for a, b in zip(ds.offsets[:-1].tolist(), ds.offsets[1:].tolist())]


def copy_rate(candidates: PatientEvents, reference: PatientEvents, num_samples: int, seed: int) -> dict:
  """Fraction of `candidates` rows with a non-empty code sequence equal to the code sequence of
  some row of `reference`, with an interval."""
  codes = common_codes(candidates, reference)
  known = set(sequence_keys(reference, codes))
  keys = sequence_keys(candidates, codes)
  hits = np.array([len(k) > 0 and k in known for k in keys], np.float64)
  return dict(**metrics.mean_ci(hits, num_samples, seed), copies=int(hits.sum()), sequences=len(keys))


def self_copy_rate(generated: PatientEvents, true: PatientEvents, num_samples: int, seed: int) -> dict:
  """Fraction of generations that reproduce their own patient's true continuation exactly."""
  codes = common_codes(generated, true)
  hits = np.array([len(g) > 0 and g == t for g, t in
                   zip(sequence_keys(generated, codes), sequence_keys(true, codes))], np.float64)
  return dict(**metrics.mean_ci(hits, num_samples, seed), copies=int(hits.sum()), sequences=len(hits))


def membership_inference(generator, members: PatientEvents, nonmembers: PatientEvents,
                         num_samples: int, seed: int) -> dict:
  """AUC of the per-token log-likelihood threshold attack (members = positives), or a reason why
  it could not be computed (the generator offers no likelihood)."""
  scored = getattr(generator, "scored_log_likelihood", None)

  def score(ds: PatientEvents) -> tuple[np.ndarray, np.ndarray]:
    if scored is not None:
      ll, n = scored(ds)
    else:
      ll, n = generator.log_likelihood(ds), ds.lengths
    return np.asarray(ll, np.float64), np.asarray(n, np.int64)

  try:
    (ll_member, n_member), (ll_nonmember, n_nonmember) = score(members), score(nonmembers)
  except NotImplementedError as e:
    return dict(value=None, ci95=[None, None], reason=f"generator has no log-likelihood ({e})")
  for name, ll, n, ds in (("members", ll_member, n_member, members),
                          ("non-members", ll_nonmember, n_nonmember, nonmembers)):
    if ll.shape != (ds.num_patients,) or n.shape != (ds.num_patients,):
      raise ValueError(f"log_likelihood returned shapes {ll.shape}, {n.shape} for {ds.num_patients} {name}")
  scores = np.concatenate([ll_member / np.maximum(n_member, 1), ll_nonmember / np.maximum(n_nonmember, 1)])
  labels = np.concatenate([np.ones(members.num_patients, bool), np.zeros(nonmembers.num_patients, bool)])
  finite = np.isfinite(scores)
  if not finite.all():
    log.warning("membership inference: %d non-finite log-likelihoods dropped", int((~finite).sum()))
  r = metrics.ranking_metrics(scores[finite], labels[finite], num_samples, seed)["auroc"]
  m = members.num_patients
  return dict(**r, members=int(m), nonmembers=int(nonmembers.num_patients),
              mean_member_ll_per_token=float(np.mean(scores[:m][finite[:m]])),
              mean_nonmember_ll_per_token=float(np.mean(scores[m:][finite[m:]])),
              mean_member_scored_tokens=float(np.mean(n_member)) if m else None,
              mean_nonmember_scored_tokens=float(np.mean(n_nonmember)) if len(n_nonmember) else None,
              normalisation="log_likelihood / scored tokens" if scored is not None
              else "log_likelihood / number of events (the generator does not say what it scored)")
