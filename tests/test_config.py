"""Configs: derived fields follow command-line and sweep overrides; derived settings apply after them."""

import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from rltf_jax.configs import base, simulator
from conftest import REPO
from rltf_jax import sweep
from rltf_jax.data.cohorts import COHORTS
from rltf_jax.data.load import load_dataset

SFT_FROM_RLTF = ("batch_size", "epochs", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "b1",
                 "b2", "clip_norm", "ckpt_every", "log_every", "seed")


def parse_flags(*overrides: str, spec: str = "configs/scd.py:smoke"):
  """The config launch.py would run with these `--config.<field>=<value>` flags."""
  argv = ["launch.py", f"--config={REPO / spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("size", ["smoke", None, "paper"])
def test_derived_fields_keep_their_default_values(size):
  cfg = base.get_config(size)
  for field in SFT_FROM_RLTF:
    assert cfg.sft[field] == cfg.rltf[field] and type(cfg.sft[field]) is type(cfg.rltf[field])
  assert cfg.eval.max_new_events == 2 * cfg.eval.truncate_events
  assert cfg.pretrain.ckpt_every == cfg.pretrain.eval_every
  if size is None:
    assert (cfg.sft.lr, cfg.sft.epochs, cfg.eval.max_new_events, cfg.pretrain.ckpt_every) == \
        (5e-5, 1, 40, 350)


def test_command_line_overrides_reach_derived_fields():
  cfg = parse_flags("--config.rltf.lr=0.001", "--config.rltf.epochs=3",
                    "--config.eval.truncate_events=7", "--config.pretrain.eval_every=50")
  assert cfg.is_locked
  assert (cfg.sft.lr, cfg.sft.epochs) == (0.001, 3)
  assert cfg.eval.max_new_events == 14
  assert cfg.pretrain.ckpt_every == 50
  # A derived field overridden itself keeps its own value and leaves its source alone.
  cfg = parse_flags("--config.sft.lr=0.0002", "--config.eval.max_new_events=9",
                    "--config.pretrain.ckpt_every=5")
  assert (cfg.rltf.lr, cfg.sft.lr) == (5e-5, 0.0002)
  assert (cfg.eval.truncate_events, cfg.eval.max_new_events) == (5, 9)
  assert (cfg.pretrain.eval_every, cfg.pretrain.ckpt_every) == (20, 5)


def test_sweep_overrides_reach_derived_fields():
  cfg = base.get_config("smoke")
  run = sweep.apply_overrides(cfg, {"rltf.lr": 1e-3, "rltf.seed": 4, "eval.truncate_events": 8})
  assert (run.sft.lr, run.sft.seed, run.eval.max_new_events) == (1e-3, 4, 16)
  assert (cfg.sft.lr, cfg.eval.max_new_events) == (5e-5, 10)   # the base config is untouched
  run = sweep.apply_overrides(cfg, {"rltf.seed": 1, "sft.seed": 7})
  assert (run.rltf.seed, run.sft.seed) == (1, 7)
  assert run.to_dict()["sft"]["seed"] == 7   # config.json records resolved values


def test_cohort_floor_applies_at_draw_time_after_overrides():
  """`data.min_cohort_percent` set on the command line or by a sweep changes the draw."""
  cfg = base.get_config("smoke")   # floor 5%
  scd = COHORTS["scd"].codes
  raised = sweep.apply_overrides(cfg, {"data.num_patients": 400})
  paper = sweep.apply_overrides(cfg, {"data.num_patients": 400, "data.min_cohort_percent": 0.0})
  # The config records what was asked for; the simulator's table keeps the paper's frequency.
  assert paper.data.min_cohort_percent == 0.0
  assert paper.data.simulator.conditions.scd.prevalence == raised.data.simulator.conditions.scd.prevalence
  assert load_dataset(raised.data).patients_with_any(scd).sum() == 20   # 5% of 400
  assert load_dataset(paper.data).patients_with_any(scd).sum() == 1     # 0.036% of 400, at least 1


def test_simulator_config_matches_table4_and_imports_no_library():
  assert simulator.TABLE4_PERCENT == {n: c.paper_frequency_percent for n, c in COHORTS.items()}
  assert list(simulator.TABLE4_PERCENT) == list(COHORTS)
  code = ("import sys; import rltf_jax.configs.simulator; "
          "print(sorted(m for m in sys.modules if m.startswith('rltf_jax') "
          "and m != 'rltf_jax' and not m.startswith('rltf_jax.configs')))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]"
