"""End to end: honest toy generators through `evaluate_generator`, then the report command."""

import json

import ml_collections
import numpy as np
import pytest

from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import ConfigError, DataError
from rltf_jax.evaluation import evaluate, utility
from rltf_jax.reporting import report
from rltf_jax.reporting.results import collect
from test_eval_utility import toy_dataset

T = 3


def eval_config(**overrides) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict(dict(
      truncate_events=T, min_prompt_events=1, max_new_events=2 * T, num_test_patients=0,
      num_train_patients=20, num_membership_patients=30, model_fraction=0.7, member_fraction=0.5, bootstrap_samples=50,
      catboost_iterations=10, catboost_depth=4, catboost_threads=1, temperature=1.0, top_k=0,
      top_p=1.0, seed=0, forecast_samples=2,
      evaluators=("fidelity", "forecast", "utility", "memorization", "prevalence")))
  cfg.update(overrides)
  return cfg


def _continuation(prompts: PatientEvents, lengths, codes, code) -> PatientEvents:
  """Continuations of `prompts`: events in one new visit after each prompt's last one."""
  lengths = np.asarray(lengths, np.int64)
  last = np.maximum(prompts.offsets[1:] - 1, 0)
  last_visit = np.where(prompts.lengths > 0, prompts.visit[last], -1) if prompts.num_events else \
      np.full(len(prompts), -1)
  last_day = np.where(prompts.lengths > 0, prompts.day[last], 15000) if prompts.num_events else \
      np.full(len(prompts), 15000)
  rep = lambda a: np.repeat(a, lengths)
  return PatientEvents.build(
      subject_id=prompts.subject_id, sex=prompts.sex, birth_day=prompts.birth_day, split=prompts.split,
      offsets=np.concatenate([[0], np.cumsum(lengths)]), code=code, day=rep(last_day + 1),
      visit=rep(last_visit + 1), pos=np.full(int(lengths.sum()), 21), codes=codes)


class Oracle:
  """Returns each patient's true continuation; its likelihood gives training patients away."""
  name = "rltf"

  def __init__(self, full: PatientEvents):
    self.full = full
    self.row = {int(s): i for i, s in enumerate(full.subject_id)}

  def complete(self, prompts, *, max_new_events, seed):
    rows = np.array([self.row[int(s)] for s in prompts.subject_id])
    full = self.full.select(rows)
    starts = full.offsets[:-1] + prompts.lengths
    lens = np.minimum(full.lengths - prompts.lengths, max_new_events)
    ev = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lens)]).astype(np.int64)
    out = _continuation(prompts, lens, full.codes, full.code[ev])
    return PatientEvents.build(**{f: getattr(out, f) for f in
                                  ("subject_id", "sex", "birth_day", "split", "offsets", "codes")},
                               code=full.code[ev], day=full.day[ev], visit=full.visit[ev], pos=full.pos[ev])

  def log_likelihood(self, ds):
    return -ds.lengths * np.where(ds.split == 0, 1.0, 2.0)  # -1 per event for members, -2 otherwise


class Silent:
  """Never generates anything and offers no likelihood."""
  name = "base"

  def complete(self, prompts, *, max_new_events, seed):
    return _continuation(prompts, np.zeros(len(prompts)), ["ICD10CM/I10"], np.zeros(0, np.int32))

  def log_likelihood(self, ds):
    raise NotImplementedError("silent test generator")


class AlwaysTarget:
  """Emits exactly one target event (D573) for every patient; its likelihood is uninformative."""
  name = "sft"

  def complete(self, prompts, *, max_new_events, seed):
    return _continuation(prompts, np.ones(len(prompts)), ["ICD10CM/D573"], np.zeros(len(prompts), np.int32))

  def log_likelihood(self, ds):
    return -np.ones(ds.num_patients) * np.maximum(ds.lengths, 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("run")
  # Fidelity is scored on the validation patients: with this draw, 5 of their 24 true
  # continuations hold the target (and 9 of their records).
  ds = toy_dataset(160, seed=2)
  results = {}
  for gen in (Oracle(ds), Silent(), AlwaysTarget()):
    results[gen.name] = evaluate.evaluate_generator(gen, ds, "scd", eval_config(),
                                                    root / "scd" / "eval" / gen.name)
  return root, ds, results


def test_oracle_scores_perfectly(run_dir):
  _, _, results = run_dir
  m = results["rltf"]
  t = m["fidelity"]["target"]
  assert t["counts"]["actual_positive"] > 0
  assert t["precision"]["value"] == 1.0 and t["recall"]["value"] == 1.0 and t["f1"]["value"] == 1.0
  assert m["fidelity"]["rouge1"]["value"] == 1.0
  # identical features and labels train the identical classifier
  assert m["utility"]["synthetic"]["auroc"] == m["utility"]["real"]["auroc"]
  mem = m["memorization"]
  assert mem["self_copy_train"]["value"] == 1.0
  assert mem["exact_copy_of_train_continuation"]["value"] == mem["real_test_equal_to_train_continuation"]["value"]
  assert mem["membership_inference"]["value"] == 1.0
  for part in ("continuations", "records"):
    assert m["prevalence"][part]["pearson_r"]["value"] == pytest.approx(1.0)
    assert m["prevalence"][part]["r2_identity"]["ci95"] == [pytest.approx(1.0), pytest.approx(1.0)]


def test_silent_generator_scores_zero_by_convention(run_dir):
  _, _, results = run_dir
  m = results["base"]
  t = m["fidelity"]["target"]
  assert (t["precision"]["value"], t["recall"]["value"], t["f1"]["value"]) == (0.0, 0.0, 0.0)
  assert t["counts"]["precision_by_convention"]
  assert m["fidelity"]["rouge1"]["value"] == 0.0
  assert m["generation"]["empty_generated_fraction"] == 1.0
  assert m["memorization"]["exact_copy_of_train_continuation"]["value"] == 0.0
  assert m["memorization"]["membership_inference"]["value"] is None
  assert "no log-likelihood" in m["memorization"]["membership_inference"]["reason"]


def test_always_target_has_full_recall_and_base_rate_precision(run_dir):
  _, _, results = run_dir
  m = results["sft"]
  c = m["fidelity"]["target"]["counts"]
  assert m["fidelity"]["target"]["recall"]["value"] == 1.0
  assert m["fidelity"]["target"]["precision"]["value"] == pytest.approx(c["actual_positive"] / c["patients"])
  # every synthetic record is positive: one class, so a constant scorer with AUROC 0.5
  assert m["utility"]["synthetic"]["constant_scorer"] and m["utility"]["synthetic"]["auroc"]["value"] == 0.5
  assert m["memorization"]["membership_inference"]["value"] == 0.5
  prev = m["prevalence"]["continuations"]
  assert prev["cohort_synthetic"]["value"] == 1.0
  assert prev["cohort_real"]["value"] == pytest.approx(c["actual_positive"] / c["patients"])
  # only D573 is generated: per code, synthetic prevalence is 1 for D573 and 0 elsewhere
  z = np.load(run_dir[0] / "scd" / "eval" / "sft" / "prevalence.npz")
  assert list(z["continuations_synthetic"][z["continuations_codes"] == "ICD10CM/D573"]) == [1.0]
  assert z["continuations_synthetic"][z["continuations_codes"] != "ICD10CM/D573"].sum() == 0


def test_every_method_uses_the_same_patients_and_split(run_dir):
  root, ds, results = run_dir
  saved = {name: utility.load_utility_data(root / "scd" / "eval" / name / "utility.npz")
           for name in results}
  ids = [d.model_subject_id for d in saved.values()]
  assert all(np.array_equal(ids[0], i) for i in ids[1:])
  d = saved["rltf"]
  assert set(d.model_subject_id).isdisjoint(d.valid_subject_id)
  test_ids = set(ds.subject_id[ds.split == 2])
  assert set(d.model_subject_id) | set(d.valid_subject_id) <= test_ids
  assert not any(c == "ICD10CM/D573" for c in d.features)
  # the saved matrices rerun to the numbers in metrics.json
  cfg = eval_config()
  rerun = utility.evaluate_utility(d, iterations=cfg.catboost_iterations, threads=1, seed=cfg.seed,
                                   bootstrap_samples=cfg.bootstrap_samples, depth=cfg.catboost_depth)
  assert rerun["real"]["auroc"] == results["rltf"]["utility"]["real"]["auroc"]


def test_rerun_reuses_results_and_refuses_other_settings(run_dir):
  root, ds, results = run_dir
  out = root / "scd" / "eval" / "base"
  assert evaluate.evaluate_generator(Silent(), ds, "scd", eval_config(), out) == results["base"]
  with pytest.raises(ConfigError, match="other settings"):
    evaluate.evaluate_generator(Silent(), ds, "scd", eval_config(truncate_events=4), out)


def test_report_command_writes_report_metrics_and_plots(run_dir, capsys):
  root, _, results = run_dir
  assert report.main([str(root)]) == 0
  out = root / "report"
  text = (out / "report.md").read_text()
  for png in ("recall_f1.png", "auroc.png", "prevalence_scd.png"):
    assert (out / png).stat().st_size > 1000 and f"({png})" in text
  combined = json.loads((out / "metrics.json").read_text())
  assert set(combined["cohorts"]["scd"]) == {"base", "rltf", "sft"}
  assert combined["cohorts"]["scd"]["rltf"]["fidelity"] == results["rltf"]["fidelity"]
  # the paper's numbers sit beside ours, labelled: SCD Table 5 DPO and CHIRON, Table 6 Real
  assert "paper, on its private data" in text
  assert "0.50/0.25/0.33" in text and "1.00/0.03/0.05" in text and "0.577" in text
  assert "Sickle Cell Disease" in text
  assert "**Caution**: only 5 true continuations" in text  # the toy cohort has few positives
  # a second call regenerates from the evaluations (its own metrics.json is not read as one)
  assert report.main([str(root)]) == 0


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path):
  from rltf_jax.errors import DataError
  with pytest.raises(DataError, match="no evaluation metrics.json"):
    report.write_report(tmp_path)


def test_config_has_the_eval_section():
  pytest.importorskip("rltf_jax.data.simulate")
  from rltf_jax.configs import base
  for size, n in (("smoke", 100), (None, 2000)):
    cfg = base.get_config(size).eval
    assert cfg.num_test_patients == n and cfg.max_new_events >= cfg.truncate_events
    assert set(cfg.evaluators) <= set(evaluate.EVALUATORS)


# ---------------------------------------------------------------- populations and length matching
class Overlong:
  """The true continuation, then T events of the target: right for T events, then too long."""
  name = "overlong"

  def __init__(self, full: PatientEvents):
    self.oracle = Oracle(full)

  def complete(self, prompts, *, max_new_events, seed):
    from rltf_jax.evaluation import conditional
    true = self.oracle.complete(prompts, max_new_events=T, seed=seed)
    extra = _continuation(prompts, np.full(len(prompts), T), ["ICD10CM/D573"],
                          np.zeros(T * len(prompts), np.int32))
    return conditional.join(true, extra)

  def log_likelihood(self, ds):
    raise NotImplementedError("test generator")


class Memorizer:
  """Trained on `known` (subject ids): reproduces those patients' continuations, writes nothing
  for anyone else, and gives its training patients a higher likelihood."""
  name = "memorizer"

  def __init__(self, full: PatientEvents, known: np.ndarray):
    self.oracle, self.known = Oracle(full), np.asarray(known)

  def complete(self, prompts, *, max_new_events, seed):
    out = self.oracle.complete(prompts, max_new_events=max_new_events, seed=seed)
    return _keep_rows(out, np.isin(prompts.subject_id, self.known))

  def log_likelihood(self, ds):
    return -ds.lengths * np.where(np.isin(ds.subject_id, self.known), 1.0, 2.0)


def _keep_rows(ds: PatientEvents, keep: np.ndarray) -> PatientEvents:
  """`ds` with the events of rows where `keep` is False removed (the rows stay, empty)."""
  ev = np.repeat(keep, ds.lengths)
  lens = np.where(keep, ds.lengths, 0)
  return PatientEvents.build(
      subject_id=ds.subject_id, sex=ds.sex, birth_day=ds.birth_day, split=ds.split,
      offsets=np.concatenate([[0], np.cumsum(lens)]), code=ds.code[ev], day=ds.day[ev],
      visit=ds.visit[ev], pos=ds.pos[ev], codes=ds.codes)


def test_fidelity_and_utility_are_length_matched_with_the_uncut_numbers_beside(tmp_path):
  ds = toy_dataset(160, seed=2)
  m = evaluate.evaluate_generator(Overlong(ds), ds, "scd", eval_config(), tmp_path / "overlong")
  g = m["generation"]
  assert g["mean_generated_events"] == 2 * T and g["mean_generated_events_length_matched"] == T
  # The first T generated events are the truth: perfect; uncut, every patient gets the target.
  cut, uncut = m["fidelity"]["target"], m["fidelity_uncut"]["target"]
  assert cut["counts"]["actual_positive"] > 0
  assert (cut["precision"]["value"], cut["recall"]["value"], m["fidelity"]["rouge1"]["value"]) == (1.0, 1.0, 1.0)
  assert uncut["recall"]["value"] == 1.0 and uncut["counts"]["predicted_positive"] == uncut["counts"]["patients"]
  assert uncut["precision"]["value"] < 1.0 and m["fidelity_uncut"]["rouge1"]["value"] < 1.0
  assert m["memorization"]["rouge1_train"]["value"] == 1.0 > m["memorization"]["rouge1_train_uncut"]["value"]
  # Utility: length-matched synthetic records are the real ones; uncut, all are positive.
  assert m["utility"]["synthetic"]["auroc"] == m["utility"]["real"]["auroc"]
  assert m["utility_uncut"]["synthetic"]["constant_scorer"]
  table = m["utility_uncut"]["label_table"]
  assert table["real_negative"]["synthetic_negative"] == table["real_positive"]["synthetic_negative"] == 0
  assert m["utility"]["label_table"]["real_negative"]["synthetic_positive"] == 0
  z = np.load(tmp_path / "overlong" / "per_patient.npz")
  assert z["test_target_in_generated_uncut"].all() and np.array_equal(z["test_target_in_generated"],
                                                                      z["test_target_in_true"])


def test_prompt_only_control_and_label_table(run_dir):
  _, _, results = run_dir
  for m in results.values():
    row, table = m["utility"]["prompt_only"], m["utility"]["label_table"]
    assert row["train_patients"] == m["patients"]["modelling"] == table["patients"]
    assert row["train_positives"] == table["target_in_prompt"]
    assert row["auroc"] == results["rltf"]["utility"]["prompt_only"]["auroc"]  # no generator in it
    cells = [table[r][s] for r in ("real_positive", "real_negative")
             for s in ("synthetic_positive", "synthetic_negative")]
    assert sum(cells) == table["patients"]
    assert table["real_positive"]["synthetic_positive"] + table["real_positive"]["synthetic_negative"] \
        == m["utility"]["real"]["train_positives"]
  oracle, always = results["rltf"]["utility"]["label_table"], results["sft"]["utility"]["label_table"]
  assert oracle["real_positive"]["synthetic_negative"] == oracle["real_negative"]["synthetic_positive"] == 0
  assert always["real_negative"]["synthetic_negative"] == 0  # every synthetic record is positive


def test_fidelity_is_scored_on_patients_no_method_trained_on(tmp_path):
  ds = toy_dataset(160, seed=2)
  cfg = eval_config()
  plan = evaluate.select_patients(ds, "scd", cfg)
  modelling = plan.model_subject_id
  # A baseline trained on the modelling set: perfect there, silent on everyone else.
  m = evaluate.evaluate_generator(Memorizer(ds, modelling), ds, "scd", cfg, tmp_path / "memorizer",
                                  trained_on=modelling)
  t = m["fidelity"]["target"]
  assert t["counts"]["patients"] == m["patients"]["validation"] == len(plan.valid_subject_id)
  assert t["counts"]["actual_positive"] > 0 and t["recall"]["value"] == 0.0
  assert m["fidelity"]["rouge1"]["value"] == 0.0
  z = np.load(tmp_path / "memorizer" / "per_patient.npz")
  assert set(z["test_subject_id"][z["test_validation"]]) == set(plan.valid_subject_id)
  # Its in-sample numbers appear only as memorization, on its own training patients.
  mem = m["memorization"]
  assert mem["rouge1_train"]["value"] == 1.0 and mem["self_copy_train"]["value"] == 1.0
  assert set(z["train_subject_id"]) <= set(modelling) and len(z["train_subject_id"]) == cfg.num_train_patients
  mia = mem["membership_inference"]
  # Members and non-members matched by cohort (as many of each, at most num_membership_patients).
  assert mia["value"] == 1.0 and 0 < mia["members"] == mia["nonmembers"] <= cfg.num_membership_patients
  assert m["patients"]["trained_on"]["patients"] == len(modelling)
  # Training on a patient that fidelity scores is refused.
  with pytest.raises(DataError, match="validation"):
    evaluate.evaluate_generator(Memorizer(ds, modelling), ds, "scd", cfg, tmp_path / "leak",
                                trained_on=np.concatenate([modelling, plan.valid_subject_id[:1]]))


def test_memorization_uses_the_methods_own_training_patients(tmp_path):
  ds = toy_dataset(160, seed=2)
  cfg = eval_config()
  train_ids = ds.subject_id[ds.split == 0]
  pairs_patients = train_ids[::3]  # e.g. the patients of RLTF's preference pairs
  m = evaluate.evaluate_generator(Memorizer(ds, pairs_patients), ds, "scd", cfg, tmp_path / "pairs",
                                  trained_on=pairs_patients)
  z = np.load(tmp_path / "pairs" / "per_patient.npz")
  assert set(z["train_subject_id"]) <= set(pairs_patients)
  assert m["memorization"]["rouge1_train"]["value"] == 1.0
  assert m["memorization"]["membership_inference"]["value"] == 1.0
  # The default (no trained_on) is the training split, the base model's pretraining patients.
  base = evaluate.evaluate_generator(Memorizer(ds, pairs_patients), ds, "scd", cfg, tmp_path / "base")
  zb = np.load(tmp_path / "base" / "per_patient.npz")
  assert set(zb["train_subject_id"]) <= set(train_ids) and not set(zb["train_subject_id"]) <= set(pairs_patients)
  assert base["memorization"]["rouge1_train"]["value"] < 1.0


def test_a_generator_that_adds_nothing_scores_exactly_the_prompt_only_control(run_dir):
  # The silent generator's synthetic records are its prompts: the control is what it must match.
  _, _, results = run_dir
  u = results["base"]["utility"]
  assert u["synthetic"]["auroc"] == u["prompt_only"]["auroc"]
  assert u["synthetic"]["train_positives"] == u["prompt_only"]["train_positives"]


def test_paired_comparisons_and_calibration_know_the_oracle_and_the_silent_generator(run_dir):
  root, _, results = run_dir
  comparisons = report.paired_comparisons(collect(root, skip=root / "report"))
  oracle_minus_silent = comparisons["scd"]["rltf-base"]["all"]
  assert oracle_minus_silent["recall"]["value"] == 1.0 and oracle_minus_silent["f1"]["value"] == 1.0
  assert oracle_minus_silent["recall"]["ci95"][0] == 1.0  # every resample with a positive: +1
  cal = {m: results[m]["fidelity"]["calibration"]["all"]["value"] for m in results}
  assert cal["rltf"] == 1.0 and cal["base"] == 0.0  # the oracle copies, the silent one never writes
  counts = results["sft"]["fidelity"]["target"]["counts"]
  assert cal["sft"] == pytest.approx(counts["patients"] / counts["actual_positive"])
  new, rep = (results["rltf"]["fidelity"][k]["counts"]["patients"]
              for k in ("target_new_onset", "target_repeat"))
  assert new + rep == results["rltf"]["fidelity"]["target"]["counts"]["patients"]
  path = report.write_report(root, root / "report-paired")
  assert "## 1b. Against the base model" in path.read_text()


def test_evaluation_functions_are_short():
  """The evaluation layer reads in pieces: no function of rltf_jax/evaluation is over 80 lines."""
  import ast
  import pathlib
  root = pathlib.Path(evaluate.__file__).parent
  long = []
  for path in root.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 80:
          long.append(f"{path.name}:{node.name} ({n} lines)")
  assert not long, long
