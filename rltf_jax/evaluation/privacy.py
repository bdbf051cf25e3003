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


def dp_lines(results: dict) -> list[str]:
  """The report's paragraph on differentially private fine-tuning: per cohort and fine-tune, the
  target and spent epsilon (`training.dp` of its metrics.json, from the run's `dp.json`)."""
  rows = []
  for cohort, methods in results.items():
    for method, m in methods.items():
      d = m.get("training", {}).get("dp")
      if d is None:
        continue
      if not d.get("enabled"):
        rows.append(f"| {cohort} | {method} | off | - | - | - | - |")
        continue
      rows.append(f"| {cohort} | {method} | {d['target_epsilon']:g} | {d['spent_epsilon']:.3f} | "
                  f"{d['delta']:.0e} | {d['noise_multiplier']:.3f} x {d['clip_norm']:g} | "
                  f"{d['steps']} steps, q = {d['sampling_rate']:.4f} ({d['pairs']} patients) |")
  if not rows:
    return []
  if all("| off |" in r for r in rows):
    return ["*Differential privacy*: no fine-tune of this run is differentially private "
            "(`rltf.dp.epsilon` = 0); `--config.rltf.dp.epsilon=8` trains one (docs/privacy.md).", ""]
  covers = sorted({m["training"]["dp"]["covers"] for ms in results.values() for m in ms.values()
                   if m.get("training", {}).get("dp", {}).get("enabled")})
  text = ("*Differentially private fine-tuning* (`rltf.dp`, DP-SGD: each pair's gradient clipped, "
          "Gaussian noise added, Poisson-sampled batches; `dp_accounting`'s Renyi accountant). The unit "
          "is one patient (one pair each). Threat model: anyone holding the fine-tuned model (or "
          "anything made from it) and every other patient's pair learns about one pair patient at "
          "most what (epsilon, delta) bounds.")
  if covers:
    text += " It covers " + "; ".join(covers) + "."
  return [text, "", "| Cohort | Method | Target epsilon | Spent epsilon | delta | Noise x clip | Steps |",
          "|---|---|---|---|---|---|---|", *rows, ""]


def dp_card_lines(dp: dict, real_prompts: bool) -> list[str]:
  """The data card's lines on differential privacy, from the generator's `dp.json`
  (`finetune.dp_info`)."""
  if not dp.get("enabled"):
    return ["- **Not differentially private**: nothing bounds what these records reveal about the "
            "patients the generator trained on (`rltf.dp.epsilon` = 0; `--config.rltf.dp.epsilon=8` "
            "trains a private fine-tune)."]
  line = (f"- **Differentially private fine-tune**: (epsilon = {dp['spent_epsilon']:.2f}, delta = "
          f"{dp['delta']:.0e}) per patient of its {dp['pairs']} preference pairs (target epsilon "
          f"{dp['target_epsilon']:g}; DP-SGD, noise multiplier {dp['noise_multiplier']:.3f}, clip "
          f"{dp['clip_norm']:g}, {dp['steps']} steps at sampling rate {dp['sampling_rate']:.4f}; "
          f"{dp['accountant']}). It covers {dp['covers']}.")
  if real_prompts:
    line += " It does not cover the real prompts this dataset carries."
  return [line]
