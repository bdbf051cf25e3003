"""K generated continuations per prompt as MEDS trajectories, the format `meds-trajectory-evaluation`
(PyPI; MEDS-DEV) reads, with the real records beside them on the same clock.

`out_dir` after `write_trajectories`:
  samples/<k>.parquet  draw k (k = 0..K-1) of every prompt: MEDS rows `subject_id`, `time`, `code`,
                       `numeric_value` (null) and `prediction_time` (the time of the prompt's last
                       event), the first `horizon` generated events of each patient; every patient
                       appears in every file, in the same order (the package lines the files up
                       row by row)
  truth.parquet        the real records cut at the horizon: prompt + true continuation (MEDS data
                       rows, no prediction_time), written when the true continuations are given

Clock: an event's time is its day at midnight (as `rltf_jax.data.meds.write_meds`) plus i
microseconds for the i-th event of that day in the patient's record, prompt and continuation
numbered together. The prompt is cut after an event, often inside a visit, so without the
microseconds a continuation's first events would share the prompt's last time and a reader that
splits history from future at `prediction_time` (strictly after, as the package's
`get_raw_tte`) would count them as history. Dates are unchanged.

A draw that stopped at EOS before the horizon ends with one `TIMELINE//END` row (one microsecond
after its last event, or after `prediction_time` when it wrote nothing), so an empty draw is still
a row of its patient and "the record ended" is not confused with "not generated".

`hits_from_files` reads the files back: per patient, how many of the K draws hold a target code
(the forecast's h_i over the same horizon; `test_trajectories.py` checks its AUROC against the
package's temporal AUC).
"""

from __future__ import annotations

from pathlib import Path

import meds as meds_standard
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rltf_jax import io
from rltf_jax.data import meds
from rltf_jax.data.events import PatientEvents
from rltf_jax.errors import DataError
from rltf_jax.evaluation import conditional

END_CODE = "TIMELINE//END"
SAMPLES_DIR = "samples"
TRUTH_FILE = "truth.parquet"


# ---------------------------------------------------------------- the clock
def _rank_within_day(patient: np.ndarray, day: np.ndarray) -> np.ndarray:
  """0-based rank of each event among its patient's consecutive events of the same day."""
  n = len(day)
  new = np.ones(n, bool)
  new[1:] = (patient[1:] != patient[:-1]) | (day[1:] != day[:-1])
  start = np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else np.zeros(0, np.int64)
  return np.arange(n) - start


def _last_event_times(prompts: PatientEvents) -> tuple[np.ndarray, ...]:
  """(time_us [E] of every prompt event, prediction_time_us [N], last day [N], events that day [N])."""
  if (prompts.lengths == 0).any():
    raise DataError("trajectories: every prompt needs an event (its last event's time is the "
                    "prediction time)")
  patient = prompts.event_patient()
  rank = _rank_within_day(patient, prompts.day)
  times = prompts.day.astype(np.int64) * meds._US_PER_DAY + rank
  last = prompts.offsets[1:] - 1
  return times, times[last], prompts.day[last].astype(np.int64), rank[last] + 1


def continuation_times(prompts: PatientEvents, continuation: PatientEvents) -> tuple[np.ndarray, np.ndarray]:
  """(time_us [E] of the continuation's events, prediction_time_us [N]) on the module's clock."""
  _, prediction, last_day, on_last_day = _last_event_times(prompts)
  patient = continuation.event_patient()
  if (continuation.day < last_day[patient]).any():
    raise DataError("trajectories: a continuation has an event before its prompt's last day")
  rank = _rank_within_day(patient, continuation.day)
  # A continuation's events on the prompt's last day keep counting after the prompt's.
  rank = rank + np.where(continuation.day == last_day[patient], on_last_day[patient], 0)
  return continuation.day.astype(np.int64) * meds._US_PER_DAY + rank, prediction


# ---------------------------------------------------------------- tables
def _table(subject_id, time_us, code, prediction_us=None) -> pa.Table:
  columns = {"subject_id": pa.array(subject_id, pa.int64()),
             "time": pa.array(time_us, pa.int64()).cast(pa.timestamp("us")),
             "code": pa.array(code, pa.string()),
             "numeric_value": pa.nulls(len(code), pa.float32())}
  if prediction_us is not None:
    columns["prediction_time"] = pa.array(prediction_us, pa.int64()).cast(pa.timestamp("us"))
  return pa.table(columns)


def trajectory_table(prompts: PatientEvents, continuation: PatientEvents, horizon: int) -> pa.Table:
  """One draw as MEDS trajectory rows: each patient's first `horizon` generated events, then
  `END_CODE` if the draw stopped before the horizon (module doc)."""
  conditional._check_rows(prompts, continuation, "trajectory draw")
  cut = conditional.head(continuation, horizon)
  times, prediction = continuation_times(prompts, cut)
  patient = cut.event_patient()
  ended = cut.lengths < horizon
  end_time = np.where(cut.lengths > 0, times[np.maximum(cut.offsets[1:] - 1, 0)] if cut.num_events
                      else 0, prediction) + 1
  # Rows: each patient's events, then its end marker (stable sort keeps the events' order).
  row_patient = np.concatenate([patient, np.flatnonzero(ended)])
  order = np.argsort(row_patient, kind="stable")
  row_patient = row_patient[order]
  code = np.concatenate([cut.codes[cut.code], np.full(ended.sum(), END_CODE)])[order]
  time = np.concatenate([times, end_time[ended]])[order]
  return _table(prompts.subject_id[row_patient], time, code, prediction[row_patient])


def truth_table(prompts: PatientEvents, true: PatientEvents) -> pa.Table:
  """The real records up to the horizon (prompt + true continuation) on the same clock."""
  conditional._check_rows(prompts, true, "true continuations")
  prompt_times, _, _, _ = _last_event_times(prompts)
  true_times, _ = continuation_times(prompts, true)
  patient = np.concatenate([prompts.event_patient(), true.event_patient()])
  order = np.argsort(patient, kind="stable")  # each patient's prompt, then its continuation
  code = np.concatenate([prompts.codes[prompts.code], true.codes[true.code]])[order]
  time = np.concatenate([prompt_times, true_times])[order]
  return _table(prompts.subject_id[patient[order]], time, code)


def _write_parquet(table: pa.Table, path: Path, what: str) -> None:
  meds._official(what, path, meds_standard.DataSchema, table)
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink)
  io.atomic_write_bytes(path, sink.getvalue().to_pybytes())


# ---------------------------------------------------------------- writing and reading
def write_trajectories(generator, prompts: PatientEvents, *, samples: int, horizon: int, seed: int,
                       out_dir: str | Path, true: PatientEvents | None = None,
                       overwrite: bool = False) -> Path:
  """Draws `samples` (K) ordinary continuations of `horizon` events per prompt
  (`generator.complete(..., seed=seed + k)` for draw k) and writes them, and `truth.parquet` when
  `true` (the true continuations, row i of prompt i) is given, as the module doc lays out; the
  directory appears whole or not at all. Returns `out_dir`."""
  if samples < 1 or horizon < 1:
    raise DataError(f"trajectories: samples and horizon must be at least 1, got {samples}, {horizon}")
  order = np.argsort(prompts.subject_id, kind="stable")  # MEDS rows are sorted by subject
  sorted_prompts = prompts.select(order)
  with io.atomic_directory(out_dir, overwrite=overwrite) as tmp:
    tmp.chmod(0o755)
    (tmp / SAMPLES_DIR).mkdir()
    for k in range(samples):  # drawn in the caller's order: the draws `complete` gives it
      draw = generator.complete(prompts, max_new_events=horizon, seed=seed + k)
      conditional._check_rows(prompts, draw, f"trajectory draw {k}")
      _write_parquet(trajectory_table(sorted_prompts, draw.select(order), horizon),
                     tmp / SAMPLES_DIR / f"{k}.parquet", f"trajectory sample {k}")
    if true is not None:
      _write_parquet(truth_table(sorted_prompts, true.select(order)), tmp / TRUTH_FILE, "real records")
  return Path(out_dir)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  t = pq.read_table(path, columns=["subject_id", "code", "prediction_time"])
  return (t["subject_id"].to_numpy(), t["code"].to_numpy(zero_copy_only=False).astype(str),
          t["prediction_time"].cast(pa.int64()).to_numpy())


def hits_from_files(out_dir: str | Path, target_codes) -> dict[str, np.ndarray]:
  """Per patient of `out_dir/samples/*.parquet`: `hits` (int [N], draws holding a target code),
  `samples` (K), `subject_id` and `prediction_time_us` (int64 [N], file order)."""
  files = sorted(Path(out_dir, SAMPLES_DIR).glob("*.parquet"), key=lambda p: int(p.stem))
  if not files:
    raise DataError(f"{out_dir}: no trajectory samples ({SAMPLES_DIR}/<k>.parquet)")
  targets = np.asarray(sorted(set(target_codes)), dtype=str)
  subjects = prediction = hits = None
  for path in files:
    subject, code, pred = _read(path)
    first = np.r_[True, subject[1:] != subject[:-1]] if len(subject) else np.zeros(0, bool)
    ids = np.cumsum(first) - 1  # rows of one patient are consecutive
    if subjects is None:
      subjects, prediction = subject[first], pred[first]
      hits = np.zeros(len(subjects), np.int64)
    elif not np.array_equal(subject[first], subjects):
      raise DataError(f"{path}: other patients or another order than {files[0].name}")
    held = np.zeros(len(subjects), bool)
    held[ids[np.isin(code, targets)]] = True
    hits += held
  return dict(subject_id=subjects, prediction_time_us=prediction, hits=hits,
              samples=np.int64(len(files)))


# ---------------------------------------------------------------- the evaluator
def evaluate(plan, results: dict) -> tuple[dict, dict]:
  """Evaluator `trajectories` (opt in: add it to `eval.evaluators`): K = `eval.forecast_samples`
  draws of T events per evaluated patient in `<out>/trajectories/`, with the real records."""
  del results
  out = plan.out / "trajectories"
  K, T = int(plan.cfg.forecast_samples), plan.T
  if not out.exists():  # a resumed evaluation keeps the files it wrote
    write_trajectories(plan.generator, plan.prompts, samples=K, horizon=T, seed=plan.seed + 100,
                       out_dir=out, true=plan.true)
  return dict(trajectories=dict(directory="trajectories", samples=K, horizon=T,
                                patients=int(plan.prompts.num_patients))), {}
