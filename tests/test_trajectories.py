"""K trajectories per prompt in the MEDS trajectory format: the files' rows against a hand-written
case, the hits read back from the files against the draws, and the AUROC of hits / K per stratum
against our metric and against `meds-trajectory-evaluation`'s own temporal AUC on the same files."""

from datetime import timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest

from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import DataError
from rltf_jax.evaluation import conditional, metrics, trajectories

DAY = 86_400 * 10**6  # microseconds
T_CODE = "ICD10CM/D571"
CODES = [T_CODE, "ICD10CM/E119", "ICD10CM/I10", "ICD10CM/D570"]
TARGETS = (T_CODE, "ICD10CM/D570")


def events(subject_ids, records) -> PatientEvents:
  """Patients from per-patient lists of (day, code index)."""
  lengths = [len(r) for r in records]
  flat = [e for r in records for e in r]
  return PatientEvents.build(
      subject_id=subject_ids, sex=np.zeros(len(records)), birth_day=np.zeros(len(records)),
      offsets=np.concatenate([[0], np.cumsum(lengths)]), code=[c for _, c in flat],
      day=[d for d, _ in flat], visit=np.zeros(len(flat)), pos=np.zeros(len(flat)), codes=CODES)


class Scripted:
  """A generator whose continuation for seed s is `draws[s]` (row i for prompt row i)."""
  name = "scripted"

  def __init__(self, draws):
    self.draws, self.seeds = draws, []

  def complete(self, prompts, *, max_new_events, seed):
    self.seeds.append(seed)
    out = self.draws[seed]
    assert np.array_equal(out.subject_id, prompts.subject_id)
    return out


# ---------------------------------------------------------------- the hand-written case
T, I10, E119 = 0, 2, 1
IDS = [30, 10, 20]  # out of order: the files sort by subject
PROMPTS = events(IDS, [[(100, I10), (105, E119), (105, I10)], [(200, T)], [(300, I10)]])
TRUE = events(IDS, [[(105, T), (106, I10)], [(201, I10), (202, I10)], [(300, I10), (310, T)]])
DRAWS = {5: events(IDS, [[(105, T), (107, I10)], [(201, I10)], []]),
         6: events(IDS, [[(106, E119), (106, T), (107, I10)], [(202, T), (203, I10)],
                         [(301, I10), (301, I10)]])}


def rows(table):
  d = table.to_pydict()
  us = lambda t: None if t is None else (t - t.replace(year=1970, month=1, day=1, hour=0, minute=0,
                                                        second=0, microsecond=0)).days * DAY + t.microsecond
  return [(s, us(t), c, us(p) if p is not None else None)
          for s, t, c, p in zip(d["subject_id"], d["time"], d["code"],
                                d.get("prediction_time", [None] * len(d["code"])))]


def test_files_hold_the_draws_on_the_prompt_clock(tmp_path):
  gen = Scripted(DRAWS)
  out = trajectories.write_trajectories(gen, PROMPTS, samples=2, horizon=2, seed=5,
                                        out_dir=tmp_path / "traj", true=TRUE)
  assert gen.seeds == [5, 6]
  END = trajectories.END_CODE
  # Draw 0: patient 10 stopped after one event (end marker 1 us later); patient 20 wrote nothing
  # (end marker 1 us after its prediction time); patient 30's first event shares the prompt's last
  # day, on which the prompt has two events, so it is the day's third (+2 us).
  assert rows(pq.read_table(out / "samples" / "0.parquet")) == [
      (10, 201 * DAY, CODES[I10], 200 * DAY), (10, 201 * DAY + 1, END, 200 * DAY),
      (20, 300 * DAY + 1, END, 300 * DAY),
      (30, 105 * DAY + 2, T_CODE, 105 * DAY + 1), (30, 107 * DAY, CODES[I10], 105 * DAY + 1)]
  # Draw 1: patient 30's three events are cut at the horizon (2), with no end marker.
  assert rows(pq.read_table(out / "samples" / "1.parquet")) == [
      (10, 202 * DAY, T_CODE, 200 * DAY), (10, 203 * DAY, CODES[I10], 200 * DAY),
      (20, 301 * DAY, CODES[I10], 300 * DAY), (20, 301 * DAY + 1, CODES[I10], 300 * DAY),
      (30, 106 * DAY, CODES[E119], 105 * DAY + 1), (30, 106 * DAY + 1, T_CODE, 105 * DAY + 1)]
  assert rows(pq.read_table(out / "truth.parquet")) == [
      (10, 200 * DAY, T_CODE, None), (10, 201 * DAY, CODES[I10], None), (10, 202 * DAY, CODES[I10], None),
      (20, 300 * DAY, CODES[I10], None), (20, 300 * DAY + 1, CODES[I10], None),
      (20, 310 * DAY, T_CODE, None),
      (30, 100 * DAY, CODES[I10], None), (30, 105 * DAY, CODES[E119], None),
      (30, 105 * DAY + 1, CODES[I10], None), (30, 105 * DAY + 2, T_CODE, None),
      (30, 106 * DAY, CODES[I10], None)]
  got = trajectories.hits_from_files(out, TARGETS)
  assert list(got["subject_id"]) == [10, 20, 30] and got["samples"] == 2
  assert list(got["hits"]) == [1, 0, 2]
  assert list(got["prediction_time_us"]) == [200 * DAY, 300 * DAY, 105 * DAY + 1]
  # By hand: p = (0.5, 0, 1), y = (0, 1, 1): patient 30 outranks 10 (1 > 0.5), 20 does not (0 <
  # 0.5), so AUROC = 1/2.
  y = np.array([0, 1, 1], bool)
  assert metrics.auroc(got["hits"] / 2, y)[0] == 0.5


def test_an_existing_directory_and_an_empty_prompt_are_refused(tmp_path):
  trajectories.write_trajectories(Scripted(DRAWS), PROMPTS, samples=1, horizon=2, seed=5,
                                  out_dir=tmp_path / "t")
  with pytest.raises(FileExistsError):
    trajectories.write_trajectories(Scripted(DRAWS), PROMPTS, samples=1, horizon=2, seed=5,
                                    out_dir=tmp_path / "t")
  empty = events([1], [[]])
  with pytest.raises(DataError, match="every prompt needs an event"):
    trajectories.write_trajectories(Scripted({0: empty}), empty, samples=1, horizon=2, seed=0,
                                    out_dir=tmp_path / "e")
  assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------- a random case, both AUCs
def random_case(n=90, K=6, seed=0):
  """Prompts, true continuations (T = 4) and K draws with same-day events, early stops, empty
  draws, and a target rate that depends on the prompt (so the AUROC is not 0.5)."""
  rng = np.random.default_rng(seed)

  def record(start, length, p_target):
    day, out = start, []
    for _ in range(length):
      day += int(rng.choice([0, 0, 1, 30]))
      out.append((day, int(rng.choice([0, 3]) if rng.random() < p_target else rng.choice([1, 2]))))
    return out

  risk = rng.uniform(0, 0.5, n)
  ids = rng.permutation(np.arange(1000, 1000 + n))
  prompts = [record(1000 + 50 * i, int(rng.integers(1, 6)), risk[i] / 2) for i in range(n)]
  last = [p[-1][0] for p in prompts]
  true = [record(last[i], 4, risk[i]) for i in range(n)]
  draws = {100 + k: events(ids, [record(last[i], int(rng.choice([0, 2, 4, 6])), risk[i])
                                 for i in range(n)]) for k in range(K)}
  return events(ids, prompts), events(ids, true), draws


def test_hits_from_the_files_are_the_draws_hits_and_the_auroc_is_ours(tmp_path):
  prompts, true, draws = random_case()
  out = trajectories.write_trajectories(Scripted(draws), prompts, samples=6, horizon=4, seed=100,
                                        out_dir=tmp_path / "traj", true=true)
  got = trajectories.hits_from_files(out, TARGETS)
  order = np.argsort(prompts.subject_id)
  direct = sum(conditional.head(d, 4).patients_with_any(TARGETS).astype(int) for d in draws.values())
  np.testing.assert_array_equal(got["subject_id"], prompts.subject_id[order])
  np.testing.assert_array_equal(got["hits"], direct[order])
  y = true.patients_with_any(TARGETS)[order]
  assert 0 < y.sum() < len(y) and 0.5 < metrics.auroc(got["hits"] / 6, y)[0] < 1.0


def test_our_auroc_per_stratum_is_the_packages_temporal_auc(tmp_path):
  """The package reads the same files: its time to the first target after prediction_time in
  truth.parquet gives the label, the share of sample files with one gives the probability. The
  files end at the horizon (T events), so a window longer than any record (600 years) asks its
  question over the same horizon; censoring is off, since a continuation without the target within
  T events is a negative, not a censored case. Strata: rows of the package's own table filtered by
  whether the prompt holds the target. (Its `history/<predicate>` column, which `exclude_history`
  reads, is the same for patients with a target somewhere in the record, but in 0.0.6 it is also
  true for every patient with none at all, so `exclude_history=True` would drop those from the
  new-onset stratum; the filter avoids it.)"""
  pl = pytest.importorskip("polars")
  pytest.importorskip("MEDS_trajectory_evaluation")
  from aces.config import PlainPredicateConfig
  from MEDS_trajectory_evaluation.temporal_AUC_evaluation.get_ttes import (
      get_raw_tte, get_trajectory_tte, merge_pred_ttes)
  from MEDS_trajectory_evaluation.temporal_AUC_evaluation.temporal_AUCS import temporal_aucs

  prompts, true, draws = random_case(n=120, seed=3)
  out = trajectories.write_trajectories(Scripted(draws), prompts, samples=6, horizon=4, seed=100,
                                        out_dir=tmp_path / "traj", true=true)
  predicates = {"target": PlainPredicateConfig(code={"regex": "^(ICD10CM/D571|ICD10CM/D570)$"})}
  files = sorted((out / "samples").glob("*.parquet"))
  samples = [pl.read_parquet(f) for f in files]
  pred = merge_pred_ttes([get_trajectory_tte(df, predicates) for df in samples])
  index = samples[0].select("subject_id", "prediction_time").unique(maintain_order=True)
  truth = get_raw_tte(pl.read_parquet(out / "truth.parquet"), index, predicates, include_history=True)

  ours = trajectories.hits_from_files(out, TARGETS)
  order = np.argsort(prompts.subject_id)
  y = true.patients_with_any(TARGETS)[order]
  in_prompt = prompts.patients_with_any(TARGETS)[order]
  p = ours["hits"] / float(ours["samples"])
  # The package's labels are ours, and so is its history where the record holds a target.
  np.testing.assert_array_equal(truth["tte/target"].is_not_null().to_numpy(), y)
  some = in_prompt | y
  np.testing.assert_array_equal(truth["history/target"].to_numpy()[some], in_prompt[some])

  window = [timedelta(days=600 * 365)]
  auc = lambda m: temporal_aucs(truth.filter(pl.Series(m)), pred, window,
                                handle_censoring=False)["AUC/target"][0]
  strata = {name: (auc(m), m) for name, m in
            dict(all=np.ones_like(y), new_onset=~in_prompt, repeat=in_prompt).items()}
  for name, (theirs, m) in strata.items():
    assert 0 < y[m].sum() < m.sum(), name  # both classes: the AUROC is defined
    assert theirs == pytest.approx(metrics.auroc(p[m], y[m])[0], abs=1e-12), name
  assert strata["all"][0] != 0.5  # a discriminating case, not ties everywhere


@pytest.mark.slow  # about 30 s on 2 cores, nearly all of it compiling the sampler
def test_a_decoder_generator_writes_readable_trajectories(tmp_path, tiny_dataset):
  """The real sampler's continuations (codes, days from gaps) go through the same path, and the
  files' hits are those of `complete` with the same seeds."""
  from rltf_jax.data.vocab import Vocabulary
  from rltf_jax.sampling.generator import TransformerGenerator
  from test_dpo import tiny_decoder
  ds = tiny_dataset.select([0, 1])
  prompts, _ = conditional.truncate(ds, 1)
  vocab = Vocabulary.build(ds)
  graphdef, params = tiny_decoder(len(vocab))
  gen = TransformerGenerator(graphdef, params, vocab, batch_size=2, max_prompt_len=8)
  out = trajectories.write_trajectories(gen, prompts, samples=3, horizon=3, seed=7,
                                        out_dir=tmp_path / "traj")
  codes = list(vocab.codes)
  got = trajectories.hits_from_files(out, codes[:2])
  direct = sum(conditional.head(gen.complete(prompts, max_new_events=3, seed=7 + k), 3)
               .patients_with_any(codes[:2]).astype(int) for k in range(3))
  np.testing.assert_array_equal(got["hits"], direct[np.argsort(prompts.subject_id)])
  table = pq.read_table(out / "samples" / "0.parquet")
  assert table.column_names == ["subject_id", "time", "code", "numeric_value", "prediction_time"]
  t = table["time"].cast("int64").to_numpy()
  pt = table["prediction_time"].cast("int64").to_numpy()
  assert (t > pt).all()  # every generated row is after its prompt


def test_the_evaluator_writes_the_evaluated_patients_trajectories(tmp_path):
  """Opted in by name: an oracle's K draws are the true continuations, so every file holds the
  truth's rows after each prediction time, hits = K where the truth has the target, AUROC 1."""
  import polars as pl
  from rltf_jax.data.cohorts import get_cohort
  from rltf_jax.evaluation import evaluate
  from test_eval_report import Oracle, eval_config
  from test_eval_utility import toy_dataset
  ds = toy_dataset(60, seed=2)
  cfg = eval_config(evaluators=("fidelity", "trajectories"), forecast_samples=3)
  m = evaluate.evaluate_generator(Oracle(ds), ds, "scd", cfg, tmp_path / "eval")
  assert m["trajectories"] == dict(directory="trajectories", samples=3, horizon=cfg.truncate_events,
                                   patients=m["patients"]["test"]["selected"])
  out = tmp_path / "eval" / "trajectories"
  z = np.load(tmp_path / "eval" / "per_patient.npz")
  order = np.argsort(z["test_subject_id"])
  got = trajectories.hits_from_files(out, get_cohort("scd").codes)
  np.testing.assert_array_equal(got["subject_id"], z["test_subject_id"][order])
  y = z["test_target_in_true"][order]
  assert 0 < y.sum() < len(y)
  np.testing.assert_array_equal(got["hits"], 3 * y)
  assert metrics.auroc(got["hits"] / 3, y)[0] == 1.0
  truth = pl.read_parquet(out / "truth.parquet")
  sample = pl.read_parquet(out / "samples" / "2.parquet")
  future = truth.join(sample.select("subject_id", "prediction_time").unique(), on="subject_id") \
      .filter(pl.col("time") > pl.col("prediction_time"))
  assert future.select("subject_id", "time", "code").equals(sample.select("subject_id", "time", "code"))


def test_a_continuation_before_its_prompt_is_refused(tmp_path):
  early = events(IDS, [[(104, T)], [], []])  # patient 30's prompt ends on day 105
  with pytest.raises(DataError, match="before its prompt's last day"):
    trajectories.write_trajectories(Scripted({0: early}), PROMPTS, samples=1, horizon=2, seed=0,
                                    out_dir=tmp_path / "t")
  assert not (tmp_path / "t").exists()
