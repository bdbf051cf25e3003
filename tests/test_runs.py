"""The run identity (`rltf_jax.runs`), the work-directory lock, and the checks a config passes
before any work starts."""

import subprocess
import sys

import pytest

from conftest import REPO
from rltf_jax.configs import base as base_config
from rltf_jax import pipeline, runs
from rltf_jax.reporting import experiment
from rltf_jax.errors import BusyError, ConfigError, DataError, StorageError, TrainingError, cli_main
from rltf_jax.training.loop import check_finite


def test_same_identity_resumes_then_reuses_and_another_is_refused_naming_what_changed(tmp_path):
  run = runs.RunDir(tmp_path / "r", "pretrain", dict(lr=1e-3, steps=10), dict(dataset="abc"))
  assert not run.done
  run.start()
  assert not run.done and not runs.is_done(run.path)       # started, not finished: resume
  run.finish(steps=10)
  again = runs.RunDir(tmp_path / "r", "pretrain", dict(lr=1e-3, steps=10), dict(dataset="abc"))
  assert again.done and again.info == dict(steps=10) and runs.finished_key(run.path) == run.key
  other = runs.RunDir(tmp_path / "r", "pretrain", dict(lr=1e-4, steps=10), dict(dataset="xyz"))
  with pytest.raises(ConfigError, match=r"config\.lr, input\.dataset"):
    other.done


def test_a_second_run_on_a_work_directory_is_refused_and_a_killed_one_leaves_no_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from rltf_jax import runs\n"
       "with runs.workdir_lock(sys.argv[1]):\n  print('held', flush=True); time.sleep(120)",
       str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(BusyError, match=f"pid {holder.pid}"):
      experiment.run(base_config.get_config("smoke"), str(tmp_path))
  finally:
    holder.kill()
    holder.wait()
  with runs.workdir_lock(tmp_path):  # the dead process's lock is gone with it
    pass


@pytest.mark.parametrize("field, value", [("rltf.batch_size", 0), ("pretrain.batch_size", 0),
                                          ("pretrain.steps", -3), ("rltf.lr", float("nan")),
                                          ("eval.top_p", 0.0), ("data.enrich.other_rate", 0.0),
                                          ("eval.member_fraction", 1.5)])
def test_out_of_range_values_are_refused_before_any_work(tmp_path, field, value):
  cfg = base_config.get_config("smoke")
  *sections, name = field.split(".")
  section = ".".join(sections)
  node = cfg
  for part in sections:
    node = node[part]
  node[name] = value
  with pytest.raises(ConfigError, match=f"{section}.{name}=.* is out of range"):
    experiment.run(cfg, str(tmp_path))
  assert not list(tmp_path.iterdir())  # nothing written, not even the work directory


def test_every_size_of_the_base_config_is_in_range():
  for size in ("smoke", None, "paper"):
    pipeline.check_ranges(base_config.get_config(size), base_config.RANGES)


def test_a_truncation_longer_than_every_patient_fails_before_pretraining(tmp_path):
  cfg = base_config.get_config("smoke")
  cfg.eval.truncate_events = 100_000
  with pytest.raises(DataError, match="lower eval.truncate_events"):
    experiment.run(cfg, str(tmp_path))
  assert not list(tmp_path.glob("base-*"))


def test_the_nan_advice_names_what_works():
  with pytest.raises(TrainingError, match="delete /runs/x .* a rerun with the same settings would"):
    check_finite(dict(loss=float("nan")), 3, run_dir="/runs/x")


def test_a_storage_failure_is_one_line_naming_the_path_and_exit_2(capsys):
  def full():
    raise OSError(28, "No space left on device", "/runs/x/eval/rltf/metrics.json")
  with pytest.raises(SystemExit) as e:
    cli_main(full)
  err = capsys.readouterr().err.strip()
  assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
  assert "/runs/x/eval/rltf/metrics.json: No space left on device" in err


def test_a_checkpoint_write_that_fails_for_lack_of_space_is_a_storage_error(tmp_path, monkeypatch):
  import numpy as np
  import orbax.checkpoint as ocp
  from rltf_jax.checkpoints import Checkpointer

  def save(self, *args, **kwargs):  # as orbax reports it: its own error, the OSError inside
    try:
      raise OSError(28, "No space left on device", str(tmp_path / "latest"))
    except OSError as cause:
      raise RuntimeError("RESOURCE_EXHAUSTED: write failed") from cause
  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  ckpt = Checkpointer(tmp_path)
  with pytest.raises(StorageError, match="No space left on device"):
    ckpt.save_latest(1, dict(params=dict(w=np.zeros(2, np.float32))))
  assert ckpt.latest_step() is None  # nothing half-written counts as a checkpoint
  ckpt.close()
