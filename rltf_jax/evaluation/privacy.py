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


# ---------------------------------------------------------------- attack metrics at low FPR
# The synthetic-data privacy literature reports an attack by its true-positive rate at a low
# false-positive rate, as the maximum over several attacks (Carlini et al. 2022; "DCR Delusion",
# arXiv 2505.01524; Synth-MIA, arXiv 2509.18014): an AUC near 0.5 can hide a few members the attack
# recognises with certainty, which is the disclosure that matters.
LOW_FPRS = (0.001, 0.01)


def tpr_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float, num_samples: int, seed: int) -> dict:
  """TPR of "member when score >= t" at the lowest t whose false-positive rate is at most `fpr`,
  with its bootstrap interval (members and non-members resampled together, so the threshold's
  own noise is in it) and the counts it rests on: with N non-members, at most floor(fpr * N)
  false positives are allowed (0 when N < 1 / fpr: then the TPR is that of a threshold above
  every non-member)."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  order = np.argsort(-scores, kind="stable")
  s, lab = scores[order], labels[order]
  ends = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)  # last index of each tie group

  def stat(w):  # w: resample counts [b, n], in the input order
    w = w[:, order].astype(np.float64)
    pos, neg = np.cumsum(w * lab, axis=1)[:, ends], np.cumsum(w * ~lab, axis=1)[:, ends]
    n_pos, n_neg = (w * lab).sum(1), (w * ~lab).sum(1)
    ok = neg <= fpr * n_neg[:, None] + 1e-9
    k = ok.sum(1)  # groups at or above the threshold (FP nondecreasing down the ranking)
    tp = np.where(k > 0, np.take_along_axis(pos, np.maximum(k - 1, 0)[:, None], 1)[:, 0], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where((n_pos > 0) & (n_neg > 0), tp / n_pos, np.nan)

  out = metrics.bootstrap(stat, len(scores), num_samples, seed)
  one = np.ones((1, len(scores)), np.int64)[:, order]
  neg_cum = np.cumsum(one[0] * ~lab)[ends]
  k = int((neg_cum <= fpr * (~lab).sum() + 1e-9).sum())
  return dict(out, fpr=fpr, members=int(lab.sum()), nonmembers=int((~lab).sum()),
              allowed_false_positives=int(np.floor(fpr * (~lab).sum() + 1e-9)),
              false_positives=int(neg_cum[k - 1]) if k else 0,
              true_positives=int(np.cumsum(lab)[ends][k - 1]) if k else 0)


def attack_metrics(scores: np.ndarray, labels: np.ndarray, num_samples: int, seed: int) -> dict:
  """An attack's AUC (`value`, `ci95`) and its TPR at each of LOW_FPRS, with counts."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
  finite = np.isfinite(scores)
  if not finite.all():
    log.warning("membership attack: %d non-finite scores dropped", int((~finite).sum()))
    scores, labels = scores[finite], labels[finite]
  auc = metrics.ranking_metrics(scores, labels, num_samples, seed)["auroc"]
  return dict(**auc, members=int(labels.sum()), nonmembers=int((~labels).sum()),
              tpr_at_fpr={f"{f:g}": tpr_at_fpr(scores, labels, f, num_samples, seed) for f in LOW_FPRS})


def strongest(attacks: dict, fpr: float = 0.01) -> dict:
  """The attack with the highest TPR at `fpr` among `attacks` {name: attack_metrics}, and the
  highest AUC: the figures a reviewer reads (the maximum over attacks)."""
  key = f"{fpr:g}"
  scored = {n: a for n, a in attacks.items() if a.get("tpr_at_fpr", {}).get(key, {}).get("value") is not None}
  if not scored:
    return dict(reason="no attack could be scored")
  best = max(scored, key=lambda n: scored[n]["tpr_at_fpr"][key]["value"])
  best_auc = max(scored, key=lambda n: scored[n]["value"] if scored[n]["value"] is not None else -1)
  return dict(fpr=fpr, attack=best, tpr=scored[best]["tpr_at_fpr"][key],
              tpr_at_fpr_0_001=max(a["tpr_at_fpr"]["0.001"]["value"] for a in scored.values()),
              auc_attack=best_auc, auc=scored[best_auc]["value"])


# ---------------------------------------------------------------- members and non-members matched
def matched_draw(member_stratum: np.ndarray, nonmember_stratum: np.ndarray, n: int, seed: int,
                 nonmember_weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
  """(member indices, non-member indices, counts): the same number of members and non-members in
  each stratum (e.g. cohort member or not), so the two sides differ only in membership. Each
  stratum keeps min(members there, non-members there); when that exceeds `n` per side (n <= 0:
  no cap) the strata shrink in proportion. Strata with no counterpart are dropped and counted.
  `nonmember_weights`: non-members are drawn with probability in proportion to them (design
  weights, to draw them as the members were drawn) instead of uniformly."""
  rng = np.random.default_rng(seed)
  member_stratum, nonmember_stratum = np.asarray(member_stratum), np.asarray(nonmember_stratum)
  strata = np.union1d(member_stratum, nonmember_stratum)
  avail = {s: (np.flatnonzero(member_stratum == s), np.flatnonzero(nonmember_stratum == s)) for s in strata}
  take = {s: min(len(m), len(nm)) for s, (m, nm) in avail.items()}
  total = sum(take.values())
  if 0 < n < total:
    take = {s: int(np.floor(c * n / total)) for s, c in take.items()}
  mi, ni = [], []
  for s, (m, nm) in avail.items():
    mi.append(np.sort(rng.choice(m, take[s], replace=False)))
    w = None if nonmember_weights is None else np.asarray(nonmember_weights, np.float64)[nm]
    ni.append(np.sort(rng.choice(nm, take[s], replace=False, p=None if w is None else w / w.sum())))
  counts = {str(_plain(s)): dict(pool_members=int(len(avail[s][0])), pool_nonmembers=int(len(avail[s][1])),
                                 drawn_per_side=int(take[s])) for s in strata}
  return np.concatenate(mi).astype(np.int64), np.concatenate(ni).astype(np.int64), counts


def _plain(x):
  return x.item() if hasattr(x, "item") else x


def stratified_attack(scores_m: np.ndarray, scores_n: np.ndarray, stratum_m: np.ndarray,
                      stratum_n: np.ndarray, names: dict, num_samples: int, seed: int) -> dict:
  """`attack_metrics` over the matched members and non-members, and within each stratum."""
  scores = np.concatenate([scores_m, scores_n])
  labels = np.concatenate([np.ones(len(scores_m), bool), np.zeros(len(scores_n), bool)])
  strata = np.concatenate([stratum_m, stratum_n])
  out = attack_metrics(scores, labels, num_samples, seed)
  out["strata"] = {names.get(_plain(s), str(_plain(s))): attack_metrics(scores[strata == s], labels[strata == s],
                                                                       num_samples, seed)
                   for s in np.unique(strata)}
  return out


def matched_means(train: np.ndarray, train_member: np.ndarray, test: np.ndarray, test_member: np.ndarray,
                  num_samples: int, seed: int) -> dict:
  """Train and test means of a per-patient score (memorization's ROUGE-1) compared like with like:
  per stratum (cohort members, non-members), and the test mean re-weighted to the train side's
  stratum mix, with the difference train - test; intervals resample each side within strata."""
  train, test = np.asarray(train, np.float64), np.asarray(test, np.float64)
  train_member, test_member = np.asarray(train_member, bool), np.asarray(test_member, bool)
  out = {}
  for name, t_mask, v_mask in (("members", train_member, test_member),
                               ("nonmembers", ~train_member, ~test_member)):
    out[name] = dict(train=metrics.mean_ci(train[t_mask], num_samples, seed),
                     test=metrics.mean_ci(test[v_mask], num_samples, seed),
                     train_patients=int(t_mask.sum()), test_patients=int(v_mask.sum()))
  share = float(train_member.mean()) if len(train) else float("nan")
  have = [(s, w) for s, w in (("members", share), ("nonmembers", 1 - share))
          if w > 0 and out[s]["train_patients"] and out[s]["test_patients"]]
  if len(have) < sum(w > 0 for w in (share, 1 - share)):
    out["matched"] = dict(reason="a stratum of the training side has no test patient")
    return out
  rng = np.random.default_rng(seed)
  parts = {s: (train[train_member if s == "members" else ~train_member],
               test[test_member if s == "members" else ~test_member]) for s, _ in have}

  def diff(resample: bool):
    tr = te = 0.0
    for s, w in have:
      a, b = parts[s]
      if resample:
        a, b = rng.choice(a, len(a)), rng.choice(b, len(b))
      tr, te = tr + w * a.mean(), te + w * b.mean()
    return tr, te
  train_mean, test_mean = diff(False)
  draws = np.array([np.subtract(*diff(True)) for _ in range(num_samples)])
  ci = [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))] if num_samples else [None, None]
  out["matched"] = dict(train=train_mean, test_reweighted=test_mean,
                        difference=dict(value=train_mean - test_mean, ci95=ci),
                        train_member_share=share,
                        note="test patients re-weighted to the training side's cohort mix")
  return out


def likelihood_scores(generator, ds: PatientEvents) -> tuple[np.ndarray, str]:
  """Per-patient white-box scores: log-likelihood per scored token (module doc), and how they were
  normalised. Raises NotImplementedError when the generator has no likelihood."""
  scored = getattr(generator, "scored_log_likelihood", None)
  if scored is not None:
    ll, n = scored(ds)
  else:
    ll, n = generator.log_likelihood(ds), ds.lengths
  ll, n = np.asarray(ll, np.float64), np.asarray(n, np.int64)
  if ll.shape != (ds.num_patients,) or n.shape != (ds.num_patients,):
    raise ValueError(f"log_likelihood returned shapes {ll.shape}, {n.shape} for {ds.num_patients} patients")
  how = ("log_likelihood / scored tokens" if scored is not None
         else "log_likelihood / number of events (the generator does not say what it scored)")
  return ll / np.maximum(n, 1), how


def membership_inference(generator, members: PatientEvents, nonmembers: PatientEvents,
                         num_samples: int, seed: int, cohort_codes=None) -> dict:
  """The white-box attack: member when the per-token log-likelihood is high. AUC and TPR at low
  FPR (`attack_metrics`) over `members` against `nonmembers` as given; with `cohort_codes`, also
  within cohort members and non-members (`strata`). A generator without a likelihood gives a
  reason instead."""
  try:
    s_m, how = likelihood_scores(generator, members)
    s_n, _ = likelihood_scores(generator, nonmembers)
  except NotImplementedError as e:
    return dict(value=None, ci95=[None, None], reason=f"generator has no log-likelihood ({e})")
  if cohort_codes is None:
    stratum_m, stratum_n = np.zeros(len(s_m), bool), np.zeros(len(s_n), bool)
  else:
    stratum_m, stratum_n = members.patients_with_any(cohort_codes), nonmembers.patients_with_any(cohort_codes)
  out = stratified_attack(s_m, s_n, stratum_m, stratum_n, {True: "cohort", False: "non_cohort"},
                          num_samples, seed)
  if cohort_codes is None:
    del out["strata"]
  fm, fn = np.isfinite(s_m), np.isfinite(s_n)
  return dict(out, mean_member_ll_per_token=float(np.mean(s_m[fm])) if fm.any() else None,
              mean_nonmember_ll_per_token=float(np.mean(s_n[fn])) if fn.any() else None,
              normalisation=how)


def matched_membership_inference(generator, member_pool: PatientEvents, nonmember_pool: PatientEvents,
                                 cohort_codes, per_side: int, num_samples: int, seed: int,
                                 nonmember_weights: np.ndarray | None = None, source: str = "") -> dict:
  """`membership_inference` on members and non-members drawn with the same cohort mix
  (`matched_draw`: equal counts of cohort members and of non-members on each side, at most
  `per_side` per side), so that the attack sees membership and nothing else; the pools' mixes and
  the draw are in `matching`."""
  m_stratum = member_pool.patients_with_any(cohort_codes)
  n_stratum = nonmember_pool.patients_with_any(cohort_codes)
  mi, ni, counts = matched_draw(m_stratum, n_stratum, per_side, seed, nonmember_weights)
  matching = dict(nonmember_source=source, strata={"cohort" if k == "True" else "non_cohort": v for k, v in counts.items()},
                  pool_member_cohort_share=float(m_stratum.mean()) if len(m_stratum) else None,
                  pool_nonmember_cohort_share=float(n_stratum.mean()) if len(n_stratum) else None,
                  matched_cohort_share=float(m_stratum[mi].mean()) if len(mi) else None)
  if len(mi) < 2:
    return dict(value=None, ci95=[None, None], matching=matching,
                reason="fewer than 2 members with a non-member of the same cohort stratum")
  out = membership_inference(generator, member_pool.select(mi), nonmember_pool.select(ni), num_samples,
                             seed, cohort_codes)
  return dict(out, matching=matching)


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


def _f(x, d=3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"


def _ci_text(r: dict | None, d=3) -> str:
  if not r or r.get("value") is None:
    return "n/a"
  lo, hi = r.get("ci95", [None, None])
  return f"{_f(r['value'], d)} [{_f(lo, d)}, {_f(hi, d)}]"


def tpr_text(a: dict, fpr: str) -> str:
  """'TPR [interval] (TP/members; FP <= allowed of N non-members)'."""
  t = a.get("tpr_at_fpr", {}).get(fpr)
  if not t:
    return "n/a"
  return (f"{_ci_text(t)} ({t['true_positives']}/{t['members']}; {t['false_positives']} FP of "
          f"{t['nonmembers']}, {t['allowed_false_positives']} allowed)")


def membership_lines(results: dict) -> list[str]:
  """The report's like-with-like memorization table: ROUGE-1 train - test with the test side
  re-weighted to the training side's cohort mix, and the white-box attack on members and
  non-members matched by cohort stratum, with TPR at low FPR."""
  rows = []
  for cohort, methods in results.items():
    for method, m in methods.items():
      mem = m.get("memorization", {})
      mia, rm = mem.get("membership_inference") or {}, (mem.get("rouge1_matched") or {}).get("matched", {})
      if "matching" not in mia and not rm:
        continue
      share = mia.get("matching", {}).get("matched_cohort_share")
      coh = mia.get("strata", {}).get("cohort", {})
      rows.append(f"| {cohort} | {method} | {_ci_text(rm.get('difference')) if rm.get('difference') else rm.get('reason', 'n/a')} | "
                  f"{_ci_text(mia) if mia.get('value') is not None else mia.get('reason', 'n/a')} | "
                  f"{mia.get('members', '-')} / {mia.get('nonmembers', '-')}, {_f(share, 2)} | "
                  f"{tpr_text(mia, '0.001')} | {tpr_text(mia, '0.01')} | {_ci_text(coh)} |")
  if not rows:
    return []
  return ["*Members and non-members matched by cohort.* ROUGE-1 train - test: the test patients' "
          "ROUGE-1 re-weighted to the trained-on draw's cohort share (0: no memorization). The "
          "white-box attack (threat model: the attacker holds the model and scores a record's "
          "log-likelihood per token) on members and non-members drawn with equal counts in each "
          "cohort stratum, so that 0.5 and a TPR equal to the FPR mean no leakage; TPR at 0.1% and 1% "
          "FPR give the true positives and how many false positives the threshold allows of how many "
          "non-members (0 allowed: a threshold above every non-member).", "",
          "| Cohort | Method | ROUGE-1 train - test, matched | Membership AUC | Members / non-members, "
          "cohort share | TPR at 0.1% FPR | TPR at 1% FPR | AUC within the cohort |",
          "|---|---|---|---|---|---|---|---|", *rows, ""]


def strongest_lines(results: dict, released: dict) -> list[str]:
  """The report's table of the strongest membership attack per generator, overall and within the
  cohort: the highest TPR at 1% (and 0.1%) FPR over the white-box attack (each evaluation's
  `metrics.json`) and the black-box ones on its released records (`privacy.json`, `released`:
  {cohort: record})."""
  rows = []
  for cohort, rec in released.items():
    for name, r in rec.get("results", {}).items():
      for pop in ("all", "cohort"):
        attacks = dict((r.get(pop, {}).get("membership") or {}).get("attacks", {}))
        wb = (results.get(cohort, {}).get(name, {}).get("memorization") or {}).get("membership_inference") or {}
        wb = wb if pop == "all" else wb.get("strata", {}).get("cohort", {})
        if wb.get("tpr_at_fpr"):
          attacks["white-box"] = wb
        best = strongest(attacks)
        if "attack" not in best:
          continue
        rows.append(f"| {cohort} | {name} | {pop} | {best['attack']} | {tpr_text(attacks[best['attack']], '0.01')} | "
                    f"{_f(best['tpr_at_fpr_0_001'])} | {best['auc_attack']} {_f(best['auc'])} |")
  if not rows:
    return []
  return ["*Strongest membership attack per generator* (the maximum over attacks, as the synthetic-data "
          "privacy literature reads them): the white-box attack's members are the patients the method "
          "trained on (the pretraining patients for the base model), the black-box attacks' are the "
          "fine-tune's pair patients for every row; all against non-members of the same cohort mix. "
          "A TPR near the FPR (0.01) means no member is recognised; the copy anchor shows 1.", "",
          "| Cohort | Data | Patients | Strongest at 1% FPR | TPR at 1% FPR (TP/members; FP of N) | "
          "Max TPR at 0.1% FPR | Highest AUC |", "|---|---|---|---|---|---|---|", *rows, ""]
