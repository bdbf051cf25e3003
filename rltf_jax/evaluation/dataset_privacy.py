"""Privacy (and, from `dataset_fidelity`, fidelity) of a released synthetic dataset, measured from
the data alone (no model access), overall and on the rare cohort's patients on their own.

  rltf privacy --synthetic DIR --run RUN_DIR [--out DIR]
      [--patients 10000] [--sensitive NAME=CODE,CODE ...]

The released data is read as the run read its own (its `data.include` families, its code
system); records are matched to training records by content, and a "synthetic" dataset that is
mostly training records is flagged loudly. Results go to `--out`, or into the synthetic dataset
when `synthesize` wrote it; never into a source dataset.

Representation and distance. A patient is the set of distinct codes in their record (a binary
code-presence vector); the distance between two patients is the Jaccard distance of their sets,
1 - |A & B| / |A | B|. Sets, because a synthetic record that reuses a training patient's rare
combination of codes is the disclosure risk, whatever their order or counts; Jaccard, because it
ignores the thousands of codes neither patient has (cosine on binary vectors behaves alike; an
L2 distance would be dominated by record length). Intersections are sparse matrix products
(scipy), taken in blocks so that 10,000 x 40,000 patients fit in memory; nearest neighbours are
the minima over those blocks (no library offers Jaccard nearest neighbours on sparse sets).

Metrics (each `all` and `cohort`, the patients with a target code; `train` = patients the
generator's base model trained on, `holdout` = real patients no method saw):
  dcr            distance to closest training record: medians for synthetic and holdout patients,
                 and the fraction of synthetic patients closer than the holdout's 5th percentile;
                 `nndr`, the median ratio of nearest to second-nearest training distance.
  nnaa           nearest-neighbour adversarial accuracy (Yale et al. 2020, as HALO reports it):
                 AA(real, syn) = (P[d_rs > d_rr] + P[d_sr > d_ss]) / 2 with leave-one-out
                 within-set distances, on equal-sized samples; for train and holdout real sets;
                 `privacy_loss` = AA(holdout) - AA(train): > 0 means the synthetic data sits closer
                 to training patients than to unseen ones.
  membership     black-box attacks from the released data (`membership_attacks`): the distance
                 attack, score = -(distance to the nearest synthetic patient), and a reference-
                 calibrated density-ratio attack (DOMIAS-style); each attack's AUC and TPR at 0.1%
                 and 1% FPR with counts, and the strongest, on training members and holdout
                 non-members drawn with the same cohort counts (`privacy.matched_draw`).
  attribute      an attacker who knows a real patient's codes except the cohort's predicts whether
                 the patient has a cohort code from the k nearest synthetic patients (by the known
                 codes): F1 on training patients and on holdout patients; the gap is the leak.
                 `--sensitive` code sets get the same attack (`attribute_sensitive`).
  copies         exact copies: synthetic patients whose code set equals some training patient's,
                 beside the same rate for holdout patients (coincidences, the chance level).
Anchors (`anchors=True`): *copy* (the training records themselves) and *marginals* (each code
drawn independently at its training prevalence) through the same metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from rltf_jax import io
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError, cli_main
from rltf_jax.evaluation import dataset_fidelity, metrics, privacy

_BLOCK = 512  # rows of the query set per sparse product
DENSITY_K = 1  # neighbours of the reference-calibrated attack's density estimate
DISTANCE_FLOOR = 1e-3  # below any non-zero Jaccard distance of records with < 1,000 codes


def code_sets(ds: PatientEvents, table: np.ndarray) -> sp.csr_matrix:
  """float32 csr [P, C]: 1 where the patient has at least one event of code `table[c]`."""
  col = np.searchsorted(table, ds.codes)
  known = (col < len(table)) & (table[np.minimum(col, len(table) - 1)] == ds.codes)
  col = np.where(known, col, -1)[ds.code]
  keep = col >= 0
  m = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (ds.event_patient()[keep], col[keep])),
                    shape=(ds.num_patients, len(table)))
  m.sum_duplicates()
  m.data[:] = 1.0
  return m


def nearest(query: sp.csr_matrix, ref: sp.csr_matrix, k: int = 2, exclude_self: bool = False
            ) -> tuple[np.ndarray, np.ndarray]:
  """(distances [Q, k], indices [Q, k]) of each query row's k nearest reference rows by Jaccard
  distance, ascending. `exclude_self` (query is ref): a row is not its own neighbour."""
  qn = np.asarray(query.sum(axis=1)).ravel()
  rn = np.asarray(ref.sum(axis=1)).ravel()
  refT = ref.T.tocsc()
  k = min(k, ref.shape[0] - (1 if exclude_self else 0))
  dist = np.zeros((query.shape[0], k))
  idx = np.zeros((query.shape[0], k), np.int64)
  for start in range(0, query.shape[0], _BLOCK):
    stop = min(start + _BLOCK, query.shape[0])
    inter = (query[start:stop] @ refT).toarray()
    union = qn[start:stop, None] + rn[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
      d = np.where(union > 0, 1.0 - inter / union, 0.0)  # two empty sets are identical
    if exclude_self:
      d[np.arange(stop - start), np.arange(start, stop)] = np.inf
    part = np.argpartition(d, k - 1, axis=1)[:, :k]
    pd = np.take_along_axis(d, part, axis=1)
    order = np.argsort(pd, axis=1)
    dist[start:stop] = np.take_along_axis(pd, order, axis=1)
    idx[start:stop] = np.take_along_axis(part, order, axis=1)
  return dist, idx


def _equal_sample(n: int, size: int, rng) -> np.ndarray:
  return np.sort(rng.choice(n, size, replace=False)) if n > size else np.arange(n)


def nnaa(real: sp.csr_matrix, syn: sp.csr_matrix, rng) -> float:
  """Nearest-neighbour adversarial accuracy on equal-sized samples of the two sets."""
  n = min(real.shape[0], syn.shape[0])
  if n < 2:
    return float("nan")
  r, s = real[_equal_sample(real.shape[0], n, rng)], syn[_equal_sample(syn.shape[0], n, rng)]
  d_rs, d_sr = nearest(r, s, 1)[0][:, 0], nearest(s, r, 1)[0][:, 0]
  d_rr, d_ss = nearest(r, r, 1, True)[0][:, 0], nearest(s, s, 1, True)[0][:, 0]
  return float(0.5 * (np.mean(d_rs > d_rr) + np.mean(d_sr > d_ss)))


def _keys(x: sp.csr_matrix) -> list[bytes]:
  return [x.indices[x.indptr[i]:x.indptr[i + 1]].tobytes() for i in range(x.shape[0])]


def privacy_block(syn: sp.csr_matrix, train: sp.csr_matrix, holdout: sp.csr_matrix,
                  target_cols: np.ndarray, *, num_samples: int, seed: int, k: int = 5,
                  distances: dict | None = None, sensitive_cols: dict | None = None) -> dict:
  """Every metric of the module doc for one population of patients. `distances`, when given,
  receives the nearest-training-record distances of the synthetic and holdout patients (plots)."""
  rng = np.random.default_rng(seed)
  out = dict(patients=dict(synthetic=int(syn.shape[0]), train=int(train.shape[0]),
                           holdout=int(holdout.shape[0])))
  if min(syn.shape[0], train.shape[0], holdout.shape[0]) < 2:
    out["reason"] = "fewer than 2 patients in one of the sets"
    return out
  d_syn, _ = nearest(syn, train, 2)
  d_hold, _ = nearest(holdout, train, 2)
  if distances is not None:
    distances.update(synthetic=d_syn[:, 0], holdout=d_hold[:, 0])
  p5 = float(np.percentile(d_hold[:, 0], 5))
  with np.errstate(invalid="ignore", divide="ignore"):
    nndr = np.where(d_syn[:, 1] > 0, d_syn[:, 0] / d_syn[:, 1], 0.0) if d_syn.shape[1] > 1 else np.zeros(0)
  out["dcr"] = dict(synthetic_median=float(np.median(d_syn[:, 0])),
                    holdout_median=float(np.median(d_hold[:, 0])), holdout_p5=p5,
                    synthetic_below_holdout_p5=metrics.mean_ci(d_syn[:, 0] < p5, num_samples, seed),
                    nndr_median=float(np.median(nndr)) if len(nndr) else None)
  aa_train, aa_hold = nnaa(train, syn, rng), nnaa(holdout, syn, rng)
  out["nnaa"] = dict(train=aa_train, holdout=aa_hold, privacy_loss=aa_hold - aa_train)
  mi, hi, matching = privacy.matched_draw(_has(train, target_cols), _has(holdout, target_cols), 0, seed)
  members, nonmembers = train[mi], holdout[hi]
  out["membership"] = membership_attacks(syn, members, nonmembers, holdout[np.setdiff1d(
      np.arange(holdout.shape[0]), hi)], target_cols, num_samples=num_samples, seed=seed)
  out["membership"]["matching"] = matching
  out["attribute"] = _attribute(syn, members, nonmembers, target_cols, k, num_samples, seed)
  if sensitive_cols:  # the same attack for each further sensitive code set (`sensitive_codes`)
    out["attribute_sensitive"] = {name: _attribute(syn, members, nonmembers, cols, k, num_samples, seed)
                                  for name, cols in sensitive_cols.items()}
  train_keys = set(_keys(train))
  syn_copy = np.array([key in train_keys for key in _keys(syn)])
  hold_copy = np.array([key in train_keys for key in _keys(holdout)])
  out["copies"] = dict(synthetic=metrics.mean_ci(syn_copy, num_samples, seed),
                       holdout_chance=metrics.mean_ci(hold_copy, num_samples, seed))
  return out


def _has(x: sp.csr_matrix, cols: np.ndarray) -> np.ndarray:
  """bool [P]: the patient has a code among `cols`."""
  return np.asarray(x[:, cols].sum(axis=1)).ravel() > 0 if len(cols) else np.zeros(x.shape[0], bool)


def membership_attacks(syn: sp.csr_matrix, members: sp.csr_matrix, nonmembers: sp.csr_matrix,
                       spare: sp.csr_matrix, target_cols: np.ndarray, *, num_samples: int, seed: int,
                       k: int | None = None) -> dict:
  """The black-box attacks on the released data, on members and non-members of the same cohort
  mix (`privacy.matched_draw`): each attack's AUC and TPR at low FPR (`privacy.attack_metrics`),
  within the cohort too, and the strongest of them (`privacy.strongest`).

    distance  (no-box) score = -(Jaccard distance to the nearest synthetic record): the
              attacker holds the released data and a target record;
    density   (reference-calibrated, DOMIAS-style; van Breugel et al. 2023) score = log of the
              ratio of the synthetic data's density to a reference population's density near the
              target record: the attacker also holds real records of the same population, so a
              record that is merely typical is not mistaken for a member. Densities are k-nearest
              neighbour estimates (`density_ratio_scores`). The reference is the non-members'
              other fold plus the holdout records not drawn (`spare`): two folds, each scored
              against the other, so no record is in its own reference.
  """
  k = DENSITY_K if k is None else k
  m_stratum, n_stratum = _has(members, target_cols), _has(nonmembers, target_cols)
  names = {True: "cohort", False: "non_cohort"}
  if min(members.shape[0], nonmembers.shape[0]) < 2:
    return dict(value=None, ci95=[None, None], reason="fewer than 2 matched members or non-members")
  dist = lambda x: -nearest(x, syn, 1)[0][:, 0]
  attacks = dict(distance=privacy.stratified_attack(dist(members), dist(nonmembers), m_stratum, n_stratum,
                                                    names, num_samples, seed))
  rng = np.random.default_rng(seed)
  fold_m, fold_n = rng.random(members.shape[0]) < 0.5, rng.random(nonmembers.shape[0]) < 0.5
  d_m, d_n = np.zeros(members.shape[0]), np.zeros(nonmembers.shape[0])
  for fold in (True, False):
    ref = sp.vstack([nonmembers[fold_n != fold], spare]).tocsr()
    if ref.shape[0] < k:
      attacks["density"] = dict(value=None, ci95=[None, None],
                                reason=f"fewer than {k} reference records in a fold")
      break
    d_m[fold_m == fold] = density_ratio_scores(members[fold_m == fold], syn, ref, k)
    d_n[fold_n == fold] = density_ratio_scores(nonmembers[fold_n == fold], syn, ref, k)
  else:
    attacks["density"] = privacy.stratified_attack(d_m, d_n, m_stratum, n_stratum, names, num_samples, seed)
  main = attacks["distance"]  # the top-level AUC keeps its meaning (the distance attack)
  return dict(value=main["value"], ci95=main["ci95"], members=main["members"],
              nonmembers=main["nonmembers"], attacks=attacks, strongest=dict(
                  all=privacy.strongest(attacks),
                  cohort=privacy.strongest({n: a["strata"]["cohort"] for n, a in attacks.items()
                                            if "cohort" in a.get("strata", {})})))



def density_ratio_scores(targets: sp.csr_matrix, syn: sp.csr_matrix, ref: sp.csr_matrix, k: int) -> np.ndarray:
  """log (density of `syn` / density of `ref`) at each target, up to a constant, by k-nearest
  neighbour density estimates (p(x) ~ k / (n r_k(x)^dim), Loftsgaarden & Quesenberry 1965):
  dim * (log r_k,ref(x) - log r_k,syn(x)) + log(n_ref / n_syn). The dimension and the constant
  scale and shift every score alike, so the ranking (all an attack needs) is that of
  log r_k,ref - log r_k,syn, each distance + DISTANCE_FLOOR (a copy is at distance 0)."""
  d_syn = nearest(targets, syn, k)[0][:, -1]
  d_ref = nearest(targets, ref, k)[0][:, -1]
  return np.log(d_ref + DISTANCE_FLOOR) - np.log(d_syn + DISTANCE_FLOOR)


def _attribute(syn, members, holdout, target_cols, k, num_samples, seed) -> dict:
  """Attribute inference of 'has a cohort code' from the k nearest synthetic patients by the
  other codes; F1 for training members and for holdout patients."""
  if len(target_cols) == 0:
    return dict(reason="none of its codes is in the code table")
  keep = np.setdiff1d(np.arange(syn.shape[1]), target_cols)
  has = lambda x: np.asarray(x[:, target_cols].sum(axis=1)).ravel() > 0
  syn_has = has(syn)
  out = {}
  for name, real in (("train", members), ("holdout", holdout)):
    _, idx = nearest(real[:, keep], syn[:, keep], k)
    guess = syn_has[idx].mean(axis=1) >= 0.5
    truth = has(real)
    out[name] = dict(metrics.target_fidelity(guess, truth, num_samples, seed)["f1"],
                     positives=int(truth.sum()))
  out["gap"] = (out["train"]["value"] or 0.0) - (out["holdout"]["value"] or 0.0)
  return out


def marginals_anchor(train: sp.csr_matrix, n: int, seed: int) -> sp.csr_matrix:
  """Each code independently at its training prevalence."""
  p = np.asarray(train.mean(axis=0)).ravel()
  rng = np.random.default_rng(seed)
  rows, cols = [], []
  for start in range(0, n, _BLOCK):
    m = min(_BLOCK, n - start)
    hit = rng.random((m, len(p))) < p[None, :]
    r, c = np.nonzero(hit)
    rows.append(r + start)
    cols.append(c)
  r, c = np.concatenate(rows), np.concatenate(cols)
  return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(n, len(p)))


def evaluate_dataset(synthetic: PatientEvents, train: PatientEvents, holdout: PatientEvents,
                     cohort_codes, *, num_samples: int = 200, seed: int = 0, anchors: bool = True,
                     distances: dict | None = None, sensitive_codes: dict | None = None) -> dict:
  """{"generator" | "copy" | "marginals": {"all": block, "cohort": block}} (`privacy_block`).
  `distances`, when given, receives {name: {"all" | "cohort": {"synthetic", "holdout": d}}}.
  `sensitive_codes` {name: codes}: attribute inference of each set besides the cohort's codes
  (`attribute_sensitive` in each block); a set none of whose codes occurs is reported as such."""
  table = np.unique(np.concatenate([synthetic.codes, train.codes, holdout.codes]))
  target_cols = np.flatnonzero(np.isin(table, list(cohort_codes)))
  sensitive_cols = {name: np.flatnonzero(np.isin(table, list(codes)))
                    for name, codes in (sensitive_codes or {}).items()}
  X = {name: code_sets(ds, table) for name, ds in
       (("synthetic", synthetic), ("train", train), ("holdout", holdout))}
  sets = {"generator": X["synthetic"]}
  if anchors:
    rng = np.random.default_rng(seed)
    n = X["synthetic"].shape[0]
    sets["copy"] = X["train"][_equal_sample(X["train"].shape[0], n, rng)]
    sets["marginals"] = marginals_anchor(X["train"], n, seed)
  in_cohort = lambda x: np.asarray(x[:, target_cols].sum(axis=1)).ravel() > 0
  cohort_events = {name: ds.select(np.flatnonzero(ds.patients_with_any(list(cohort_codes))))
                   for name, ds in (("synthetic", synthetic), ("holdout", holdout))}
  out = {}
  for name, syn in sets.items():
    t0 = time.perf_counter()
    c_syn, c_train, c_hold = syn[in_cohort(syn)], X["train"][in_cohort(X["train"])], X["holdout"][in_cohort(X["holdout"])]
    events = name == "generator"  # the anchors are code sets: no visits or ages to compare
    d = {"all": {}, "cohort": {}}
    if distances is not None:
      distances[name] = d
    out[name] = dict(
        all=privacy_block(syn, X["train"], X["holdout"], target_cols, num_samples=num_samples, seed=seed,
                          distances=d["all"], sensitive_cols=sensitive_cols),
        cohort=privacy_block(c_syn, c_train, c_hold, target_cols, num_samples=num_samples, seed=seed,
                             distances=d["cohort"], sensitive_cols=sensitive_cols),
        fidelity=dict(
            all=dataset_fidelity.fidelity_block(X["holdout"], syn, seed, holdout if events else None,
                                                synthetic if events else None),
            cohort=dataset_fidelity.fidelity_block(
                c_hold, c_syn, seed, cohort_events["holdout"] if events else None,
                cohort_events["synthetic"] if events else None)),
        seconds=round(time.perf_counter() - t0, 2))
  return out


# ---------------------------------------------------------------- a run's released records
RUN_FILE = "privacy.json"
ARRAYS_FILE = "distances.npz"  # per data and population: nearest-reference distances, record lengths
RUN_VERSION = 4  # 4: pair patients as long as the holdout's; 3: matched members, attacks at low FPR, the density attack; 2: half the evaluated patients released, the other half the holdout; bump when evaluate_run's numbers change, so finished runs recompute them


def released_records(eval_dir: Path, prompts: PatientEvents, truncate_events: int) -> PatientEvents:
  """What a conditional release of one evaluated method holds: each evaluated patient's real
  prompt (`prompts`, the evaluation's `test_prompts.npz`) with its generated continuation cut to
  the true continuation's length (`conditional.head`)."""
  from rltf_jax.evaluation import conditional
  generated = PatientEvents.load(eval_dir / "test_generated.npz")
  return conditional.join(prompts, conditional.head(generated, truncate_events))


def _reference(ctx, reference_ids, num_released: int, rng) -> tuple[PatientEvents, str]:
  """The fine-tune's patients (`reference_ids`), or a sample of the training split, and in words."""
  from rltf_jax.evaluation import conditional
  dataset = ctx.dataset
  if reference_ids is None:
    train = dataset.split_indices("train")
    return dataset.select(train[_equal_sample(len(train), num_released, rng)]), \
        "the population's training split"
  reference = dataset.select(np.flatnonzero(np.isin(dataset.subject_id, np.unique(reference_ids))))
  # Of the same kind as the holdout: long enough to have been evaluated (the short records of the
  # pairs would otherwise stand out as members by their length alone).
  T, min_prompt = int(ctx.cfg.eval.truncate_events), int(ctx.cfg.eval.min_prompt_events)
  reference = reference.select(conditional.eligible(reference, T, min_prompt))
  return reference, ("the fine-tune's preference-pair patients long enough to be evaluated "
                     f"(at least T + {min_prompt} events)")


def evaluate_run(ctx, eval_dirs: dict[str, Path], reference_ids, out_dir: Path, *,
                 num_samples: int = 200, seed: int = 0) -> dict:
  """The privacy and fidelity suite on each evaluated method's released records (`released_records`),
  with the copy and marginals anchors, for one run (`pipeline.Context`); writes `out_dir/privacy.json`.

  Sets, chosen so that every method is measured against the same patients:
    reference  the fine-tune's training patients (`reference_ids`: the subject ids of RLTF's or
               SFT's preference pairs, drawn from the enriched sample like the evaluated patients),
               or the population's training split when no method was fine-tuned. The base model
               never saw the fine-tune's patients: its row is the level of a generator that did not
               train on them, and a fine-tune that leaks its patients sits below it on the
               distance metrics and above it on membership and attribute inference.
    released   each method's records of half the evaluated patients (half A, drawn at random within
               cohort members and within non-members);
    holdout    the real records (prompt + true continuation) of the other half (B): patients no
               method trained on whose prompts no released record holds, of the same kind and mix
               as the released records' real counterparts. (Splitting the evaluated patients, and
               not drawing unevaluated ones, keeps the measure possible when the evaluation takes
               every member there is, as it does for SCD.)
  `cohort` rows restrict every set to patients with a target code.
  """
  cohort = ctx.cohort
  T = int(ctx.cfg.eval.truncate_events)
  dataset = ctx.dataset
  rng = np.random.default_rng(seed)
  from rltf_jax.evaluation import conditional
  names = list(eval_dirs)
  # Every method of a run continued the same prompts: read them and the truth once.
  first = eval_dirs[names[0]]
  prompts = PatientEvents.load(first / "test_prompts.npz")
  real = conditional.join(prompts, PatientEvents.load(first / "test_true.npz"))
  released = {name: released_records(eval_dirs[name], prompts, T) for name in names}
  member = real.patients_with_any(cohort.codes)
  half_a = np.zeros(real.num_patients, bool)
  for stratum in (member, ~member):
    idx = rng.permutation(np.flatnonzero(stratum))
    half_a[idx[:(len(idx) + 1) // 2]] = True
  holdout = real.select(np.flatnonzero(~half_a))
  released = {name: syn.select(np.flatnonzero(half_a)) for name, syn in released.items()}
  num_released = int(half_a.sum())
  released_members = int(member[half_a].sum())
  reference, reference_source = _reference(ctx, reference_ids, num_released, rng)
  result, reason = {}, None
  if min(holdout.num_patients, reference.num_patients) < 2:
    reason = (f"not measured: {holdout.num_patients} holdout and {reference.num_patients} reference "
              "patients (at least 2 of each needed)")
  arrays = {"holdout.lengths": holdout.lengths, "reference.lengths": reference.lengths}
  for i, name in enumerate(names if reason is None else []):
    d = {}
    r = evaluate_dataset(released[name], reference, holdout, cohort.codes, num_samples=num_samples,
                         seed=seed, anchors=i == 0, distances=d)
    result[name] = r.pop("generator")
    result.update(r)  # copy and marginals, once
    d[name] = d.pop("generator")
    arrays[f"{name}.lengths"] = released[name].lengths
    arrays.update({f"{data}.{pop}.{side}": v for data, pops in d.items() for pop, sides in pops.items()
                   for side, v in sides.items()})
  record = dict(kind="rltf_jax.dataset_privacy.run", cohort=cohort.name, methods=names,
                reference_source=reference_source,
                holdout_source="the other half of the evaluated patients: prompt + true continuation",
                released="half of the evaluated patients: real prompt + generated continuation cut to "
                         "the true one's length",
                representation="code sets, Jaccard distance", anonymeter=dict(reason=ANONYMETER_ABSENT),
                patients=dict(released=num_released, released_members=released_members,
                              reference=int(reference.num_patients),
                              reference_members=int(reference.patients_with_any(cohort.codes).sum()),
                              holdout=int(holdout.num_patients),
                              holdout_members=int(holdout.patients_with_any(cohort.codes).sum())),
                results=result, reason=reason)
  out_dir.mkdir(parents=True, exist_ok=True)
  io.atomic_savez(out_dir / ARRAYS_FILE, **arrays)
  io.atomic_write_json(out_dir / RUN_FILE, record)
  return record


COPY_ALARM = 0.5  # a "synthetic" dataset with this share of training records' exact copies is flagged


def released_dataset(path: Path, data_cfg) -> PatientEvents:
  """The released MEDS data read exactly as the run read its own (`rltf_jax.data.load`): the same
  `bare_code_system`, and only the code families of `data.include` (`families.keep_families`), so
  that a record equal to a training record compares equal. (Numeric values are not re-binned into
  value tokens: a dataset written by `synthesize` carries its value tokens as codes.)"""
  from rltf_jax.data import families, meds
  ds, _, value = meds.read_meds_values(path, bare_code_system=data_cfg.bare_code_system or None)
  ds, _, _ = families.keep_families(ds, data_cfg.include, value)
  return ds


def copies_of_training(synthetic: PatientEvents, train: PatientEvents) -> dict:
  """Matched by content, never by subject id: the share of released patients whose set of codes
  (`code_sets`) equals a training patient's, and whose whole record (codes in order, with days
  counted from the record's first event) equals one."""
  table = np.unique(np.concatenate([synthetic.codes, train.codes]))
  train_sets = set(_keys(code_sets(train, table)))
  set_copy = np.array([len(k) > 0 and k in train_sets for k in _keys(code_sets(synthetic, table))])
  records = lambda ds: [_record_key(ds, i, table) for i in range(ds.num_patients)]
  train_records = set(records(train))
  record_copy = np.array([k in train_records for k in records(synthetic)]) & (synthetic.lengths > 0)
  n = max(synthetic.num_patients, 1)
  return dict(patients=int(synthetic.num_patients), code_set_copies=int(set_copy.sum()),
              code_set_copy_fraction=float(set_copy.sum() / n), record_copies=int(record_copy.sum()),
              record_copy_fraction=float(record_copy.sum() / n), training_patients=int(train.num_patients))


def _record_key(ds: PatientEvents, i: int, table: np.ndarray) -> bytes:
  a, b = int(ds.offsets[i]), int(ds.offsets[i + 1])
  codes = np.searchsorted(table, ds.codes[ds.code[a:b]]).astype(np.int64)
  days = (ds.day[a:b] - (ds.day[a] if b > a else 0)).astype(np.int64)
  return np.stack([codes, days]).tobytes()


def output_dir(synthetic: Path, out: Path | None, data_cfg) -> Path:
  """Where privacy.json goes: `out`, or else the synthetic dataset itself when `synthesize` wrote
  it (its metadata says `synthetic`); never into a source dataset."""
  if out is not None:
    return out
  meta = synthetic / "metadata" / "dataset.json"
  written_by_us = meta.exists() and bool(json.loads(meta.read_text()).get("synthetic"))
  is_source = bool(data_cfg.path) and synthetic.resolve() == Path(data_cfg.path).resolve()
  if is_source or not written_by_us:
    what = "is the run's source data" if is_source else "is not a synthetic dataset written by synthesize"
    raise ConfigError(f"{synthetic} {what}; nothing is written into it: pass --out DIR for the results")
  return synthetic


_CARD_HEADING = "## Privacy from the released data alone (`privacy.json`)"

# Why the singling-out, linkability and inference risks of `anonymeter` (Giomi et al. 2023) are
# not measured: it cannot be installed beside this project's pins. Checked 2026-12-07.
ANONYMETER_ABSENT = (
    "not measured: anonymeter (1.1.0 and 1.0.0, the only releases on PyPI) requires numpy<1.27 and "
    "pyarrow<22, while jax 0.10 here requires numpy>=2.0 (numpy 2.4.6 and pyarrow 26.0.1 installed); "
    "a number from a separate environment on a tabular view (demographics and code presence) would "
    "also drop the record's order and timing, which is what this data's re-identification rests on")


def _attack_aucs(mem: dict) -> str:
  attacks = mem.get("attacks", {})
  if not attacks:  # a privacy.json of an earlier version: one attack
    return "n/a" if mem.get("value") is None else f"{mem['value']:.3f}"
  return " / ".join("n/a" if a.get("value") is None else f"{a['value']:.3f}"
                    for a in (attacks.get("distance", {}), attacks.get("density", {})))


def _strongest_cell(mem: dict, fpr: str) -> str:
  """The highest TPR over the attacks at `fpr`, its attack and its counts."""
  best = None
  for name, a in mem.get("attacks", {}).items():
    t = a.get("tpr_at_fpr", {}).get(fpr)
    if t and t.get("value") is not None and (best is None or t["value"] > best[1]["value"]):
      best = (name, t)
  if best is None:
    return "n/a"
  name, t = best
  return (f"{t['value']:.3f} {name} ({t['true_positives']}/{t['members']}, of {t['nonmembers']}; "
          f"{t['allowed_false_positives']} FP allowed)")


def privacy_table(result: dict) -> str:
  """Markdown rows per generator/anchor and population (all patients, cohort patients)."""
  def f(x, d=3):
    return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{d}f}"
  rows = ["| Data | Patients | DCR median syn / holdout | Syn below holdout p5 | NNAA privacy loss | "
          "Membership AUC distance / density | Strongest TPR at 1% FPR (TP/members, of N non-members) | "
          "Strongest TPR at 0.1% FPR | Attribute F1 train / holdout | Exact copies (chance) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in result.items():
    for pop in ("all", "cohort"):
      b = r[pop]
      if "dcr" not in b:
        rows.append(f"| {name} | {pop} | {b.get('reason', 'n/a')} | | | | | | | |")
        continue
      att, mem = b["attribute"], b["membership"]
      rows.append(
          f"| {name} | {pop} ({b['patients']['synthetic']}) | {f(b['dcr']['synthetic_median'])} / "
          f"{f(b['dcr']['holdout_median'])} | {f(b['dcr']['synthetic_below_holdout_p5']['value'])} | "
          f"{f(b['nnaa']['privacy_loss'])} | {_attack_aucs(mem)} | {_strongest_cell(mem, '0.01')} | "
          f"{_strongest_cell(mem, '0.001')} | "
          f"{f(att.get('train', {}).get('value'), 2)} / {f(att.get('holdout', {}).get('value'), 2)} | "
          f"{f(b['copies']['synthetic']['value'])} ({f(b['copies']['holdout_chance']['value'])}) |")
  sensitive = [(name, pop, set_name, a) for name, r in result.items() for pop in ("all", "cohort")
               for set_name, a in r[pop].get("attribute_sensitive", {}).items()]
  if sensitive:  # the `--sensitive` code sets, attacked as the cohort's codes are
    rows += ["", "Attribute inference of further sensitive code sets (`--sensitive`; the same attack "
             "as the cohort's codes): F1 for the reference (training) patients and for the holdout "
             "ones, with the patients who have the set.", "",
             "| Data | Patients | Set | Attribute F1 train / holdout | Train / holdout patients with it |",
             "|---|---|---|---|---|"]
    for name, pop, set_name, a in sensitive:
      if "train" not in a:
        rows.append(f"| {name} | {pop} | {set_name} | {a.get('reason', 'n/a')} | |")
        continue
      rows.append(f"| {name} | {pop} | {set_name} | {f(a['train']['value'], 2)} / "
                  f"{f(a['holdout']['value'], 2)} | {a['train']['positives']} / {a['holdout']['positives']} |")
  rows += ["", "Fidelity against held-out real records (`privacy.json → <data>.fidelity`): per-code "
           "prevalence R^2 on the identity line by real frequency, co-occurrence R^2 of the most "
           "frequent codes, and a real-vs-synthetic detection AUC (0.5: indistinguishable).", "",
           "| Data | Patients | Prevalence R^2 common / uncommon / rare | Co-occurrence R^2 | Detection AUC | "
           "Record length W1 | Days between visits W1 |", "|---|---|---|---|---|---|---|"]
  for name, r in result.items():
    for pop in ("all", "cohort"):
      b = r.get("fidelity", {}).get(pop, {})
      if "prevalence" not in b:
        rows.append(f"| {name} | {pop} | {b.get('reason', 'n/a')} | | | | |")
        continue
      pr = b["prevalence"]
      dist = b.get("distributions", {})
      rows.append(
          f"| {name} | {pop} ({b['patients']['synthetic']}) | "
          + " / ".join(f(pr[k]["r2_identity"], 2) for k in ("common", "uncommon", "rare"))
          + f" | {f(b['cooccurrence']['r2_identity'], 2)} | {f(b['detection'].get('auroc'))} | "
          f"{f(dist.get('record_events', {}).get('wasserstein'), 1) if dist else '-'} | "
          f"{f(dist.get('days_between_visits', {}).get('wasserstein'), 1) if dist else '-'} |")
  rows += ["", f"Singling-out, linkability and inference risks (anonymeter): {ANONYMETER_ABSENT}."]
  return "\n".join(rows)


if __name__ == "__main__":  # deprecated: `rltf privacy`
  from rltf_jax.commands.privacy import main
  cli_main(main)
