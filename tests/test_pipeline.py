"""End to end: the launch pipeline at :smoke size on the simulator and the MIMIC-IV demo, and a
run interrupted between stages that resumes without redoing finished work."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import REPO, shared_path

sys.path.insert(0, str(REPO))
from rltf_jax.configs import base as base_config  # noqa: E402
from rltf_jax import checkpoints, io, runs
from rltf_jax import pipeline  # noqa: E402
from rltf_jax.reporting import experiment  # noqa: E402
from rltf_jax.errors import ConfigError  # noqa: E402


class Interrupted(Exception):
  pass


def _markers(root: Path) -> dict[str, float]:
  return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("run.json")
          if runs.is_done(p.parent)}


def test_smoke_run_resumes_after_interruption_and_redoes_nothing(tmp_path, monkeypatch, capsys):
  cfg = base_config.get_config("smoke", cohort="scd")
  cfg.methods = ("base", "rltf")
  from rltf_jax.training import dpo
  real_finetune = dpo.finetune_dpo

  def killed(*args, **kwargs):  # the process dies after the data, base-model and pairs stages
    raise Interrupted()

  monkeypatch.setattr(dpo, "finetune_dpo", killed)
  with pytest.raises(Interrupted):
    experiment.run(cfg, str(tmp_path))
  first = _markers(tmp_path)
  # data, base model and preference pairs done
  assert len(first) == 3 and not (tmp_path / "scd" / "report").exists()

  monkeypatch.setattr(dpo, "finetune_dpo", real_finetune)
  capsys.readouterr()
  assert experiment.run(cfg, str(tmp_path)) == 0
  out = capsys.readouterr().out.strip().splitlines()
  assert "[data] done already" in "\n".join(out) and "[base model] done already" in "\n".join(out)
  assert {k: v for k, v in _markers(tmp_path).items() if k in first} == first  # not redone
  report = Path(out[-1])
  assert report.name == "report.md" and report.exists()
  text = report.read_text()
  assert "RLTF (DPO-Positive)" in text and "paper" in text
  metrics = json.loads((tmp_path / "scd" / "eval" / "rltf" / "metrics.json").read_text())
  assert metrics["method"] == "rltf" and 0.0 <= metrics["fidelity"]["rouge1"]["value"] <= 1.0
  assert metrics["training"].pop("dp") == dict(enabled=False)  # DP fine-tuning is off by default
  calibration = metrics["training"].pop("calibration")  # the default calibrates per stratum
  assert set(calibration) >= {"new_onset", "repeat", "codes"} and calibration["patients"] > 0
  assert metrics["training"] == dict(positive_pairs=32, negative_pairs=32, requested_pairs=64,
                                     requested_positive_fraction=0.5, as_requested=True)

  # A finished run started again does no work, and changed settings do not overwrite it.
  before = (tmp_path / "scd" / "eval" / "rltf" / "metrics.json").stat().st_mtime_ns
  assert experiment.run(cfg, str(tmp_path)) == 0
  assert (tmp_path / "scd" / "eval" / "rltf" / "metrics.json").stat().st_mtime_ns == before
  # ... not even on storage that refuses every write: it reads back and prints its report's path.
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Read-only file system", str(args[0]) if args else "?")
  with monkeypatch.context() as m:
    m.setattr(io, "atomic_write_bytes", refuse)
    m.setattr(checkpoints, "_save", refuse)
    capsys.readouterr()
    assert experiment.run(cfg, str(tmp_path)) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(report.resolve())

  cfg.rltf.beta = 0.5
  with pytest.raises(ConfigError):
    experiment.run(cfg, str(tmp_path))

  # Following the message (delete the fine-tune, rerun) retrains RLTF; its old evaluation is then
  # refused, never reused, and recomputed once deleted.
  shutil.rmtree(tmp_path / "scd" / "rltf")
  with pytest.raises(ConfigError, match="eval/rltf"):
    experiment.run(cfg, str(tmp_path))
  shutil.rmtree(tmp_path / "scd" / "eval" / "rltf")
  assert experiment.run(cfg, str(tmp_path)) == 0
  assert (tmp_path / "scd" / "eval" / "rltf" / "metrics.json").stat().st_mtime_ns != before

  # Another pretraining config under the same work directory trains another base model; the base
  # model's evaluation of the old one is refused, not returned.
  cfg.methods = ("base",)
  cfg.pretrain.steps = 30
  with pytest.raises(ConfigError, match="eval/base"):
    experiment.run(cfg, str(tmp_path))
  assert len(list(tmp_path.glob("base-*"))) == 2


def test_mimic_demo_runs_end_to_end(tmp_path, capsys):
  demo = shared_path("data", "mimic-iv-demo-2.2")
  cfg = base_config.get_config("smoke", cohort="shock")
  cfg.methods = ("base", "rltf")
  cfg.data.source = "mimic"
  cfg.data.path = str(demo)
  cfg.data.split_fractions = (0.6, 0.1, 0.3)  # 100 patients: keep cohort positives in both halves
  cfg.eval.num_train_patients = 20
  cfg.eval.num_membership_patients = 20
  assert experiment.run(cfg, str(tmp_path)) == 0
  report = Path(capsys.readouterr().out.strip().splitlines()[-1])
  assert report.exists() and "Shock" in report.read_text()
  summary = json.loads(next(tmp_path.glob("data-*/summary.json")).read_text())
  assert summary["patients"] == 100


def test_bad_input_exits_nonzero_with_a_message_and_leaves_no_stage(tmp_path):
  import subprocess
  for override, message in [("--config.data.source=meds", "no such directory"),
                            ("--config.cohort=xyz", "unknown cohort 'xyz'")]:
    proc = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/scd.py:smoke", override,
         "--config.data.path=/nonexistent/meds", f"--workdir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("data-*")) and not list(tmp_path.glob("scd*"))


def test_base_model_key_ignores_the_enriched_sample_but_not_the_population(tiny_dataset):
  """Sweeps over the enrichment (Table 2's larger pools) share one base model: its directory key
  and its pretraining identity depend on the patients pretraining reads, not on the pool."""
  cfg = base_config.get_config()
  other = base_config.get_config()
  other.data.enrich.patients *= 20
  other.data.enrich.members_per_cohort = 6_000
  assert pipeline.base_digest(cfg) == pipeline.base_digest(other)
  other.data.num_patients += 1
  assert pipeline.base_digest(cfg) != pipeline.base_digest(other)
  # A code table with codes no selected patient has leaves the fingerprint unchanged.
  import dataclasses
  import numpy as np
  wider = dataclasses.replace(tiny_dataset, codes=np.append(tiny_dataset.codes, "ICD10CM/Z999"))
  assert wider.fingerprint() != tiny_dataset.fingerprint()
  assert wider.used_codes_only().fingerprint() == tiny_dataset.used_codes_only().fingerprint()
  assert wider.used_codes_only().equals(tiny_dataset)


def test_compilation_cache_lives_in_the_work_directory_and_yields_to_the_environment(tmp_path):
  """`use_compilation_cache` (launch.py and the sweep call it): a first process's compile misses
  and lands in `<workdir>/jax_cache`, a second process's same compile is read from there (JAX's
  cache-hit events), and JAX_COMPILATION_CACHE_DIR, when set, wins."""
  import os
  import subprocess
  program = ("import sys, jax, jax.numpy as jnp\n"
             "from jax import monitoring\n"
             "from rltf_jax import pipeline\n"
             "events = []\n"
             "monitoring.register_event_listener(lambda name, **kw: events.append(name))\n"
             "pipeline.use_compilation_cache(sys.argv[1])\n"
             "jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((8, 8))).block_until_ready()\n"
             "print(jax.config.jax_compilation_cache_dir)\n"
             "print(sum(e.endswith('/cache_hits') for e in events), sum(e.endswith('/cache_misses') for e in events))\n")
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)

  def run(e):
    out = subprocess.run([sys.executable, "-c", program, str(tmp_path / "work")], env=e, cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return out[0], tuple(int(n) for n in out[1].split())

  where, (hits, misses) = run(env)
  assert where == str((tmp_path / "work" / "jax_cache").absolute()) and hits == 0 and misses > 0
  assert any(p.name.startswith("jit_") for p in (tmp_path / "work" / "jax_cache").iterdir())
  assert run(env)[1] == (misses, 0)  # the same programs again: every one read, none compiled
  where, (hits, misses) = run(dict(env, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "elsewhere")))
  assert where == str(tmp_path / "elsewhere") and hits == 0
