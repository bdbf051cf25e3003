"""Batch jobs (rltf_jax.batch): a sweep as tasks around one shared base model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rltf_jax import batch, runs, sweep
from rltf_jax.configs import base
from rltf_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

SWEEP = """
from rltf_jax.configs import base

def get_config(arg=None):
  cfg = base.get_config("smoke")
  cfg.methods = ("base",)
  cfg.data.num_patients = 600
  cfg.eval.num_test_patients = 30
  cfg.eval.num_train_patients = 10
  cfg.eval.num_membership_patients = 10
  cfg.eval.bootstrap_samples = 0
  cfg.eval.catboost_iterations = 2
  return cfg

def get_sweep(arg=None):
  return [dict(name=c, run_name="b", overrides={"cohort": c}) for c in ("scd", "sep")]

def get_seeds(arg=None):
  return (0, 1)
"""


@pytest.fixture
def spec(tmp_path):
  path = tmp_path / "two_cohorts.py"
  path.write_text(SWEEP)
  return str(path)


def test_tasks_are_the_sweeps_runs_in_its_order(spec):
  _, name, tasks = batch.sweep_tasks(spec)
  base_cfg, runs_, _, seeds = sweep.load_sweep(spec)
  want = sweep.with_seeds(base_cfg, runs_, seeds)
  assert name == "two_cohorts" and [r for _, r in tasks] == want
  assert [(c.cohort, c.run_name, c.pretrain.seed) for c, _ in tasks] == [
      ("scd", "b", 0), ("sep", "b", 0), ("scd", "b-s1", 1), ("sep", "b-s1", 1)]
  out = subprocess.run([sys.executable, "-m", "rltf_jax.batch", "count", f"--config={spec}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.split() == ["4"], out.stderr[-2000:]


def test_a_task_never_trains_the_shared_base_model(spec, tmp_path):
  with pytest.raises(ConfigError, match="shared data is not built.*batch prepare"):
    batch.run_task(spec, 0, str(tmp_path / "work"))
  with pytest.raises(ConfigError, match="out of range.*4 tasks"):
    batch.run_task(spec, 4, str(tmp_path / "work"))


def test_tasks_sharing_a_directory_are_refused(tmp_path):
  path = tmp_path / "same_dir.py"
  path.write_text(SWEEP.replace('run_name="b"', 'run_name="b", overrides_={}').replace(
      'for c in ("scd", "sep")', 'for c in ("scd", "scd2")').replace(
      'overrides={"cohort": c}', 'overrides={"cohort": "scd"}'))
  with pytest.raises(ConfigError, match="several tasks write"):
    batch.run_task(str(path), 0, str(tmp_path / "work"))


@pytest.mark.slow  # three pipeline runs at a tiny size, about a minute
def test_prepare_then_tasks_then_the_sweep_table(spec, tmp_path):
  work = tmp_path / "work"
  assert batch.prepare(spec, str(work), seeds="0") == 0
  bases = sorted(p.name for p in work.glob("base-*"))
  assert len(bases) == 1 and runs.is_done(work / bases[0])
  for i in (1, 0):  # any order: the tasks are independent
    assert batch.run_task(spec, i, str(work), seeds="0") == 0
  assert runs.is_done(work / "scd-b" / "eval" / "base") and runs.is_done(work / "sep-b" / "eval" / "base")
  assert (work / "tasks" / "000-scd-b" / bases[0]).is_symlink()
  # The sequential sweep over the same directory finds every run finished and writes the table.
  assert sweep.run_sweep(spec, str(work), seeds="0") == 0
  table = json.loads((work / "sweeps" / "two_cohorts" / "table.json").read_text())
  assert sorted(r["cohort"] for r in table["rows"]) == ["scd", "sep"] and not table["failures"]
  assert sorted(p.name for p in work.glob("base-*")) == bases  # no base model trained twice


def test_distributed_refuses_a_mesh_that_leaves_processes_out_and_the_one_device_baselines(monkeypatch):
  """Of a job of two processes (one device each), `launch.py --distributed` needs a mesh over both
  devices and no LSTM or HALO (they train on one device); a single process accepts anything."""
  cfg = base.get_config("smoke")
  batch.check_distributed(cfg)  # one process: nothing to check
  monkeypatch.setattr(batch.jax, "process_count", lambda: 2)
  monkeypatch.setattr(batch.jax, "device_count", lambda: 2)
  with pytest.raises(ConfigError, match=r"uses 1 of the job's 2 devices .*--config.mesh.data=0"):
    batch.check_distributed(cfg)
  cfg.mesh.data = 0
  batch.check_distributed(cfg)
  cfg.methods = ("base", "rltf", "lstm")
  with pytest.raises(ConfigError, match="methods lstm train on one device"):
    batch.check_distributed(cfg)
