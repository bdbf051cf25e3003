"""The cohort-enriched sample: exact subsampling, exact inclusion probabilities, and weighted
estimates that recover the population's values (checked against a brute-force draw)."""

import numpy as np
import pytest

from rltf_jax.configs import simulator
from rltf_jax.data import enrich
from rltf_jax.data.cohorts import COHORTS, get_cohort
from rltf_jax.data.simulate import catalog, story
from rltf_jax.evaluation import conditional, metrics


def test_subsample_keeps_the_full_draws_members_with_their_ids():
  cfg = simulator.get_config()
  full = story.simulate(cfg, 4000, 3)
  sub, inclusion = story.simulate_subsample(cfg, 4000, 3, {"sep": 1.0, "ami": 1.0}, 0.05, id_offset=0)
  for name in ("sep", "ami"):
    codes = get_cohort(name).codes
    # Conditions are drawn for everyone exactly as the whole draw does: the same patients have them
    # (whether a visit codes one is drawn afresh, so a few patients differ by their codes).
    full_ids = set(full.subject_id[full.patients_with_any(codes)].tolist())
    sub_ids = set(sub.subject_id[sub.patients_with_any(codes)].tolist())
    assert len(full_ids) >= 15 and len(sub_ids ^ full_ids) <= 0.1 * len(full_ids)
  members = sub.patients_with_any(get_cohort("sep").codes) | sub.patients_with_any(get_cohort("ami").codes)
  assert np.all(inclusion[members] == 1.0)
  others = inclusion == 0.05
  # About 5% of the ~3,900 other patients are kept, each with probability 0.05.
  assert 120 < others.sum() < 280
  assert set(np.unique(inclusion).tolist()) <= {0.05, 1.0}


def test_stratified_sample_inclusion_probabilities_are_exact():
  prior = np.array([1.0] * 30 + [0.1] * 200 + [1.0] * 50)
  member = np.array([True] * 30 + [False] * 250)
  hits = np.zeros(len(prior))
  reps = 3000
  for seed in range(reps):
    idx, inclusion = enrich.stratified_sample(prior, member, 80, 0.25, seed)
    hits[idx] += 1
    assert len(idx) == 80 and member[idx].sum() == 20
  _, inclusion = enrich.stratified_sample(prior, member, 80, 0.25, 0)
  idx, _ = enrich.stratified_sample(prior, member, 80, 0.25, 0)
  expected = np.zeros(len(prior))
  expected[idx] = inclusion / prior[idx]  # this draw's own selection probability
  freq = hits / reps
  for cell in (slice(0, 30), slice(30, 230), slice(230, 280)):
    observed = freq[cell].mean()
    # every patient of a cell has the cell's probability
    cell_p = np.unique(np.round(expected[cell][expected[cell] > 0], 12))
    assert len(cell_p) == 1 and abs(observed - cell_p[0]) < 0.01
  # Non-members end with about one inclusion probability across both prior cells (up to the
  # rounding of integer cell sizes), not the 10-fold spread of their priors.
  non = ~member[idx]
  assert inclusion[non].max() / inclusion[non].min() < 1.6


def _repeat_rule(prompts, true, codes):
  """A generator that writes the target exactly when the prompt holds it (never new onset)."""
  return prompts.patients_with_any(codes)


def test_weighted_estimates_match_a_brute_force_draw():
  """The population: 8 draws of 5,000 patients (septicaemia at its paper prevalence, 0.87%). Brute
  force scores every long-enough patient; the enriched design keeps every septicaemia patient and
  5% of the others, then the evaluation draws half of those, members first. Weighted estimates must land on
  the brute-force values; unweighted ones must not (the enrichment is 40-fold)."""
  cfg = simulator.get_config()
  cohort, T, size, draws = get_cohort("sep"), 20, 5000, 8
  truth = dict(pred=[], true=[], prompt=[])
  sample = dict(pred=[], true=[], weight=[])
  for d in range(draws):
    seed = 100 + d
    full = story.simulate(cfg, size, seed)
    full = full.select(conditional.eligible(full, T))
    prompts, true = conditional.truncate(full, T)
    truth["pred"].append(_repeat_rule(prompts, true, cohort.codes))
    truth["true"].append(true.patients_with_any(cohort.codes))
    sub, prior = story.simulate_subsample(cfg, size, seed, {"sep": 1.0}, 0.05)
    ok = conditional.eligible(sub, T)
    sub, prior = sub.select(ok), prior[ok]
    member = sub.patients_with_any(cohort.codes)
    idx, inclusion = enrich.stratified_sample(prior, member, len(sub) // 2, 0.5, seed)
    sel = sub.select(idx)
    prompts, true = conditional.truncate(sel, T)
    sample["pred"].append(_repeat_rule(prompts, true, cohort.codes))
    sample["true"].append(true.patients_with_any(cohort.codes))
    sample["weight"].append(1.0 / inclusion)
  t_pred, t_true = np.concatenate(truth["pred"]), np.concatenate(truth["true"])
  s_pred, s_true, w = (np.concatenate(sample[k]) for k in ("pred", "true", "weight"))
  brute = metrics.target_fidelity(t_pred, t_true, 0, 0)
  est = metrics.target_fidelity(s_pred, s_true, 400, 0, weights=w)
  # (a sample-size guard: 56 septicaemia positives since the simulator's AUROC calibration gave
  # most episodes a work-up, whose follow-up visits push the target out of the last T events)
  assert est["weighted"] and t_true.sum() > 50
  for name in ("precision", "recall", "predicted_prevalence", "true_prevalence"):
    lo, hi = est[name]["ci95"]
    half = (hi - lo) / 2
    assert abs(est[name]["value"] - brute[name]["value"]) <= 2 * half + 1e-12, name
  # Unweighted, the enriched sample's prevalences are far above the population's.
  assert est["unweighted"]["true_prevalence"]["value"] > 10 * brute["true_prevalence"]["value"]
  assert est["unweighted"]["precision"]["value"] >= est["precision"]["value"] - 1e-9


def test_acute_cohorts_agree_with_the_simulator():
  for name, cohort in COHORTS.items():
    assert cohort.acute == (name in catalog.ACUTE), name


def test_design_defaults_to_the_population_without_a_design_file(tmp_path):
  from rltf_jax.data.events import PatientEvents
  ds = PatientEvents.build(subject_id=[1, 2], sex=[0, 1], birth_day=[0, 0], offsets=[0, 1, 2],
                           code=[0, 0], day=[9000, 9000], visit=[0, 0], pos=[11, 11],
                           codes=np.array(["ICD10CM/D573"]))
  d = enrich.load_design(tmp_path, ds, get_cohort("scd"))
  assert (d.pairs_split, d.eval_split, d.enriched) == ("train", "test", False)
  enrich.save_design(tmp_path, ds.subject_id, np.array([1.0, 0.5]), ("scd",))
  # No patient in an "eval" split: the cohort cannot be evaluated from an enriched sample.
  assert not enrich.load_design(tmp_path, ds, get_cohort("scd")).enriched
  with pytest.raises(Exception, match="subject ids"):
    enrich.load_design(tmp_path, ds.select([0]), get_cohort("scd"))
