"""The synthetic claims simulator: one shared 20,000-patient draw checked against the issue's list."""

import re

import numpy as np
import pytest

from rltf_jax.configs.simulator import get_config as default_config
from rltf_jax.data import simulate
from rltf_jax.commands import simulate as cli
from rltf_jax.data.simulate import catalog, story
from rltf_jax.evaluation import simulator_calibration as diagnostics
from rltf_jax.data.codes import CodeType
from rltf_jax.data.cohorts import COHORTS
from rltf_jax.errors import ConfigError, cli_main

N = 20_000
SEED = 0
ALL_TARGETS = {c for co in COHORTS.values() for c in co.codes}


@pytest.fixture(scope="module")
def draw():
  return simulate.simulate(default_config(), N, SEED)


@pytest.fixture(scope="module")
def props(draw):
  return diagnostics.properties(draw, default_config())


def test_every_cohort_occurs_at_its_paper_frequency(draw, props):
  for name, co in COHORTS.items():
    member = draw.patients_with_any(co.codes)
    percent = 100 * member.mean()
    assert member.sum() > 0, name
    assert abs(percent / co.paper_frequency_percent - 1) < 0.25, (name, percent, co.paper_frequency_percent)
  # Sickle-cell disease is an exactly counted genotype: round(0.036% of 20,000) = 7 patients.
  assert props["cohorts"]["scd"]["positives"] == 7


def test_scd_count_is_at_least_one_and_exact():
  cfg = default_config()
  small = simulate.simulate(cfg, 300, 5)   # 0.036% of 300 rounds to 0: still one carrier
  assert small.patients_with_any(COHORTS["scd"].codes).sum() == 1


def test_codes_are_real_and_typed(draw):
  import simple_icd_10_cm as icd
  types = draw.code_type
  assert set(np.unique(types)) == {CodeType.DIAGNOSIS, CodeType.PROCEDURE, CodeType.MEDICATION}
  for code, t in zip(draw.codes, types):
    system, value = code.split("/", 1)
    if t == CodeType.DIAGNOSIS:
      assert code in ALL_TARGETS or (icd.is_valid_item(value) and icd.is_leaf(value)), code
    elif t == CodeType.PROCEDURE:
      assert system == "CCSPX" and 1 <= int(value) <= 244, code
    else:
      assert system == "ATC" and re.fullmatch(r"[A-Z]\d\d[A-Z]{2}\d\d", value), code
  # Table-4 codes of older releases are emitted as they are.
  present = set(draw.codes)
  assert {"ICD10CM/T814XXA", "ICD10CM/E780", "ICD10CM/E872"} <= present


def test_catalog_keeps_targets_to_their_own_condition():
  import simple_icd_10_cm as icd
  for name, book in catalog.CONDITIONS.items():
    own = {catalog.canonical(c) for c, _ in book.codes}
    if name in COHORTS:
      assert own == set(COHORTS[name].codes), name   # exactly the cohort's codes, all of them
    else:
      assert not own & ALL_TARGETS, name
    for field in ("presenting", "related", "procedures", "meds", "followup"):
      codes = {catalog.canonical(c) for c, _ in getattr(book, field)}
      assert not codes & ALL_TARGETS, (name, field, codes & ALL_TARGETS)
      for c in codes:
        if c.startswith("ICD10CM/"):
          assert icd.is_valid_item(c[8:]) and icd.is_leaf(c[8:]), (name, c)
  # D573 is the only sickle-cell target; the crisis codes are family members, not targets.
  assert COHORTS["scd"].codes == ("ICD10CM/D573",)
  sickle = {catalog.canonical(c) for c, _ in catalog.CONDITIONS["sickle_crisis"].codes}
  assert "ICD10CM/D5700" in sickle and not sickle & ALL_TARGETS


def test_background_is_long_tailed(draw, props):
  assert props["distinct_icd10cm"] >= 2_000
  assert -1.8 < props["icd10cm_zipf_slope"] < -0.7
  assert props["top_icd10cm_share"] < 0.15
  counts = draw.code_counts()[draw.code_type == CodeType.DIAGNOSIS]
  assert (counts == 1).sum() > 100   # a real tail of codes seen once


def test_ages_grow_and_lengths_vary(draw, props):
  ep = draw.event_patient()
  same = ep[1:] == ep[:-1]
  assert np.all(np.diff(draw.age)[same] >= 0)
  assert np.all(np.diff(draw.day)[same] >= 0)
  assert 25 <= props["median_events"] <= 100
  assert props["p95_events"] >= 3 * props["median_events"]
  assert props["max_events"] <= default_config().max_events
  assert draw.lengths.min() >= 1
  assert 0 <= props["age_min"] and props["age_max"] < 110


def test_visits_are_zero_based_with_places_of_service(draw):
  first = draw.offsets[:-1]
  assert np.all(draw.visit[first] == 0)
  ep = draw.event_patient()
  same = ep[1:] == ep[:-1]
  assert set(np.unique(np.diff(draw.visit)[same])) <= {0, 1}   # no gaps in visit indices
  assert {11, 21, 23, 81} <= set(np.unique(draw.pos).tolist())
  assert set(np.unique(draw.sex).tolist()) == {0, 1}
  assert np.all(draw.split == 0)


def test_targets_come_after_history(props):
  for name, c in props["cohorts"].items():
    assert c["target_first_event_share"] == 0.0, name
    assert c["median_first_target_position"] >= 2, name
  acute = ("sep", "ami", "shock", "cvd", "pneu", "resp", "renal", "surg")
  assert all(props["cohorts"][n]["median_first_target_position"] >= 20 for n in acute)


def test_history_raises_hazards(props):
  h = props["history"]
  assert h["ami_rr_given_lipid"] > 2 and h["ami_rr_given_dm"] > 2
  assert h["ami_rr_given_hypertension"] > 2 and h["ami_rr_given_cad"] > 5
  assert h["shock_rr_given_sepsis"] > 3
  assert h["resp_rr_given_copd"] > 3
  assert h["surg_rr_given_surgery"] > 3
  assert h["scd_er_visits_mean"] > 3 * h["others_er_visits_mean"]


def test_sickle_cell_patients_have_their_care_pattern(draw):
  scd = draw.patients_with_any(COHORTS["scd"].codes)
  related = ["ICD10CM/D5700", "ICD10CM/D5701", "ICD10CM/D57219", "ATC/L01XX05", "CCSPX/222",
             "ATC/B03BB01"]
  has_related = draw.patients_with_any(related)
  assert has_related[scd].mean() >= 0.5
  assert has_related[scd].mean() > 10 * has_related[~scd].mean()
  # ... but the family codes are not a marker of the cohort: others have them too.
  assert draw.patients_with_any(["ICD10CM/D5700"])[~scd].sum() >= 1


def test_history_predicts_cohorts_but_not_perfectly(draw):
  aurocs = diagnostics.cohort_aurocs(draw, iterations=20, thread_count=2, seed=0)
  scored = {n: r["auroc"] for n, r in aurocs.items() if r["positives"] >= 50}
  assert len(scored) == 15   # every cohort but SCD (7 positives) has enough to score
  # Upper bound 0.995, not lower: the simulator is calibrated to the paper's Table 6 "Real"
  # AUROCs, which reach 0.99 (shock) and 0.97 (septicaemia, respiratory failure).
  for name, auc in scored.items():
    assert 0.65 < auc < 0.995, (name, auc)
  assert max(scored.values()) > 0.9 and min(scored.values()) < 0.85   # easy and hard cohorts


def test_deterministic_for_a_seed():
  cfg = default_config()
  a = simulate.simulate(cfg, 2_000, 11)
  b = simulate.simulate(cfg, 2_000, 11)
  c = simulate.simulate(cfg, 2_000, 12)
  assert a.equals(b)
  assert not a.equals(c)


def _dense_hazard(sim, cc, rng):
  """The hazard formula of the story's docstring, one [P, M] masked pass per factor (no row
  restriction): the reference `_Simulation._hazard` must equal exactly."""
  ages = np.arange(story._MAX_AGE + 1) + 0.5
  per_year = np.interp(ages, story._AGES, cc.age_curve)
  cum = np.concatenate([[0.0], np.cumsum(per_year)])
  w = (per_year / 12.0).astype(np.float32)[sim.age_pm] * sim.active
  pre = np.interp(sim.age_start, np.arange(story._MAX_AGE + 2), cum)
  if cc.prevalent_only:
    w[:] = 0.0
    pre = np.ones(sim.P)
  months = np.arange(sim.M)
  scale = np.where(sim.sex == 1, cc.male_rr, 1.0)
  for f, rr in cc.risk.items():
    np.multiply(w, np.float32(rr), out=w, where=sim.onset_month[f][:, None] < months)
    pre = pre * np.where(sim.onset_month[f] < sim.start, rr, 1.0)
  for f, rr in cc.recent.items():
    pat, mon, _ = sim.episodes[f]
    recent = np.zeros((sim.P, sim.M), bool)
    for lag in range(cc.recent_months):   # an episode in month m marks m .. m + recent_months - 1
      ok = mon + lag < sim.M
      recent[pat[ok], mon[ok] + lag] = True
    np.multiply(w, np.float32(rr), out=w, where=recent)
  if cc.requires:
    ok = np.zeros((sim.P, sim.M), bool)
    ok_pre = np.zeros(sim.P, bool)
    for f in cc.requires:
      ok |= (sim.onset_month[f][:, None] < months) | (sim.onset_month[f][:, None] < 0)
      ok_pre |= sim.onset_month[f] < sim.start
    w *= ok
    pre = pre * ok_pre
  if cc.frailty_sigma > 0:
    s = cc.frailty_sigma
    scale = scale * np.exp(rng.normal(0.0, s, sim.P) - s * s / 2)
  w *= scale.astype(np.float32)[:, None]
  return w, pre * scale


def test_hazard_touching_only_affected_rows_equals_the_dense_formula():
  cfg = default_config()
  sim = story._Simulation(cfg, 3_000, 5)
  sim.enrol()
  sim.conditions()
  kinds = dict(prevalent=0, requires=0, recent=0, risk=0)
  for name in catalog.CONDITIONS:
    cc = cfg.conditions[name]
    kinds["prevalent"] += bool(cc.prevalent_only)
    kinds["requires"] += bool(cc.requires)
    kinds["recent"] += bool(cc.recent)
    kinds["risk"] += bool(cc.risk)
    w, pre = sim._hazard(name, cc, sim.rng("condition", name))
    w_ref, pre_ref = _dense_hazard(sim, cc, sim.rng("condition", name))
    assert w.dtype == w_ref.dtype and np.array_equal(w, w_ref), name
    assert np.array_equal(pre, pre_ref), name
  assert min(kinds.values()) > 0, kinds   # every branch of the hazard was compared
  # Both ways of `_multiply_rows` (a few rows gathered, most rows through one masked pass).
  rng = np.random.default_rng(0)
  for n_rows in (10, 2_500):
    w = rng.random((3_000, 7), dtype=np.float32)
    rows = np.sort(rng.choice(3_000, n_rows, replace=False))
    where = rng.random((n_rows, 7)) < 0.5
    ref = w.copy()
    full = np.zeros(w.shape, bool)
    full[rows] = where
    np.multiply(ref, np.float32(1.7), out=ref, where=full)
    story._Simulation._multiply_rows(w, rows, np.float32(1.7), where)
    assert np.array_equal(w, ref)


def test_bad_input_is_refused(capsys):
  cfg = default_config()
  for n in (0, -5):
    with pytest.raises(ConfigError, match="positive"):
      simulate.simulate(cfg, n, 0)
  with pytest.raises(SystemExit) as e:
    cli_main(lambda: cli.main(["--patients", "0", "--report"]))
  assert e.value.code == 2 and "--patients" in capsys.readouterr().err
  bad = default_config()
  bad.conditions.htn.risk.dm = 2.0    # dm is drawn after htn
  with pytest.raises(ConfigError, match="conditions.htn"):
    simulate.simulate(bad, 10, 0)
  bad = default_config()
  bad.conditions.ami.prevalence = 0.0
  with pytest.raises(ConfigError, match="conditions.ami.prevalence"):
    simulate.simulate(bad, 10, 0)



def test_a_missing_field_is_named():
  """The simulator has no defaults of its own: a field missing from its config is an error."""
  for section, field, where in (("visits", "rate_per_month", "data.simulator.visits"),
                                (None, "max_events", "data.simulator"),
                                ("conditions.scd", "p_code", "data.simulator.conditions.scd")):
    bad = default_config()
    node = bad
    for part in (section.split(".") if section else []):
      node = node[part]
    del node[field]
    with pytest.raises(ConfigError, match=rf"{where} lacks {field}\b"):
      simulate.simulate(bad, 10, 0)


def test_cohort_floor_raises_only_rarer_cohorts():
  floored = simulate.raise_rare_cohorts(default_config(), 1.0)
  for name, co in COHORTS.items():
    assert floored.conditions[name].prevalence == max(co.paper_frequency_percent / 100, 0.01), name
  assert default_config().conditions.scd.prevalence < 0.01   # the input is not changed
  with pytest.raises(ConfigError, match="min_cohort_percent"):
    simulate.raise_rare_cohorts(default_config(), -1)

def test_cli_writes_meds_and_json_report(tmp_path):
  from rltf_jax.data import meds
  out = tmp_path / "sim"
  report = tmp_path / "report.json"
  assert cli.main(["--patients", "300", "--seed", "3", "--out", str(out), "--report-json",
                   str(report), "--auroc-iterations", "0"]) == 0
  back, has_splits = meds.read_meds(out)
  again = simulate.simulate(default_config(), 300, 3)
  assert not has_splits and back.num_patients == 300 and back.num_events == again.num_events
  assert report.exists()
  with pytest.raises(Exception, match="exists"):   # finished work is not overwritten
    cli.main(["--patients", "300", "--seed", "3", "--out", str(out)])


def test_calibration_measures_the_evaluations_auroc_on_a_small_draw():
  cfg = default_config()
  pool = diagnostics.calibration_pool(cfg, 8_000, 0, members=60, others=200, draw_size=4_000)
  # The conditions phase is reusable: finishing it again gives the same records, and it is
  # simulate_subsample's draw.
  sims, rates, other_rate = pool
  again = story.finish_subsample(sims[0], cfg)
  assert again.equals(story.finish_subsample(sims[0]))
  seed0 = (0 << 20) + 7919
  direct, _ = story.simulate_subsample(cfg, 4_000, seed0, rates, other_rate, id_offset=10**10)
  assert direct.equals(again)
  out = diagnostics.calibration_aurocs(cfg, pool, members=60, iterations=10, cohorts=["dm", "ami"])
  assert set(out) == {"dm", "ami"}
  for name, r in out.items():
    assert r["positives"] >= 10 and 0.5 < r["auroc"] <= 1.0, (name, r)
    assert r["patients"] <= 2 * 60


def test_data_include_and_value_tokens_leave_the_simulator_data_byte_identical():
  """The issue-15 data options at their defaults (and with every family included) change nothing
  of the simulator's data: its fingerprint equals a draw split without them, as before they existed."""
  from rltf_jax.configs import base
  from rltf_jax.data.events import assign_splits
  from rltf_jax.data.load import load_with_report, simulator_config
  cfg = base.get_config("smoke").data
  before = simulate.simulate(simulator_config(cfg), num_patients=cfg.num_patients, seed=cfg.seed)
  before = before.with_splits(assign_splits(before.subject_id, tuple(cfg.split_fractions),
                                            cfg.split_seed))
  ds, report = load_with_report(cfg)
  assert ds.fingerprint() == before.fingerprint() and ds.equals(before)
  assert report["dropped_events"] == dict(labs=0, other=0) and report["splits"]["source"] == "data.split_fractions"
  cfg.include = ("diagnoses", "procedures", "medications", "labs", "other")
  ds, report = load_with_report(cfg)
  assert ds.fingerprint() == before.fingerprint() and report["dropped_events"] == {}


def test_chunked_draw_writes_one_shard_per_chunk_with_distinct_subjects(tmp_path):
  import pyarrow.parquet as pq
  from rltf_jax.data import meds
  out = cli.write_in_chunks(default_config(), tmp_path / "m", 250, seed=3, chunk=100,
                            verbose=False)
  assert sorted(p.name for p in (out / "data").iterdir()) == ["0.parquet", "1.parquet", "2.parquet"]
  ds, has_splits = meds.read_meds(out)
  assert not has_splits and list(ds.subject_id) == list(range(1, 251))
  listed = set(pq.read_table(out / "metadata" / "codes.parquet").column("code").to_pylist())
  assert set(ds.codes) <= listed
  # Chunk 1 is its own draw: not a copy of chunk 0 under other ids.
  first, second = ds.select(np.arange(0, 100)), ds.select(np.arange(100, 200))
  assert not np.array_equal(first.lengths, second.lengths)


def test_a_draw_too_small_for_some_causes_still_simulates():
  # 25 patients leave some conditions without a single episode; an episode that follows such a
  # cause in the same month once indexed its empty list (rltf bench scale --chunk-patients 50).
  ds = story.simulate(default_config(), 25, seed=0)
  assert ds.num_patients == 25
