"""Preemption: SIGTERM during pretraining saves a checkpoint and exits 143; the rerun resumes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from rltf_jax import runs
from rltf_jax.checkpoints import Checkpointer
from rltf_jax.preemption import PREEMPTED_STATUS

REPO = Path(__file__).resolve().parents[1]

# A tiny pretraining (tests/test_pretrain.py's config) in its own process. With KILL_AT set, the
# process sends itself SIGTERM while the batch of that step is being built, as a scheduler would
# at any moment: the step in progress still finishes and is checkpointed.
SCRIPT = textwrap.dedent("""
  import os, signal, sys
  sys.path.insert(0, "tests")
  from test_pretrain import tiny_config
  from rltf_jax.configs import simulator
  from rltf_jax.data import simulate
  from rltf_jax.data.events import assign_splits
  from rltf_jax.data.vocab import Vocabulary
  from rltf_jax.training import pretrain as pt

  ds = simulate.simulate(simulator.get_config(), 300, 0)
  ds = ds.with_splits(assign_splits(ds.subject_id, (0.8, 0.2, 0.0), 0))
  vocab = Vocabulary.build(ds, min_count=3)
  kill_at = int(os.environ.get("KILL_AT", -1))
  make_batch = pt.Batches.__call__
  def batch(self, step):
    if step == kill_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return make_batch(self, step)
  pt.Batches.__call__ = batch
  # ckpt_every = steps: the only checkpoint before the end is the one SIGTERM asks for.
  cfg = tiny_config(steps=16, ckpt_every=16, eval_every=16, log_every=1, num_valid_patients=0)
  pt.pretrain(cfg, ds, vocab, sys.argv[1])
""")


def _run(workdir: Path, **env):
  # Compilation is most of each process's time: XLA's cheapest CPU optimisation, and the persistent
  # cache so that the rerun does not compile again (about 25 s become about 12 s on 2 busy cores).
  fast = dict(XLA_FLAGS=" ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0",
                                  "--xla_llvm_disable_expensive_passes=true"]),
              JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "jax-cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return subprocess.run([sys.executable, "-c", SCRIPT, str(workdir)], cwd=REPO, capture_output=True,
                        text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), **fast, **env))


def test_sigterm_saves_exits_143_and_the_rerun_resumes(tmp_path):
  run = tmp_path / "base"
  got = _run(run, KILL_AT="5")
  assert got.returncode == PREEMPTED_STATUS == 143, got.stderr[-3000:]
  assert "SIGTERM: stopped after step 6 of 16" in got.stderr
  assert not runs.is_done(run)
  ckpt = Checkpointer(run)
  assert ckpt.latest_step() == 6  # step 5 (0-based), in progress when the signal came, finished
  ckpt.close()

  again = _run(run)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming" in again.stdout and "from step 6" in again.stdout
  assert "step 1/16" not in again.stdout  # not from 0
  assert runs.is_done(run)
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert sorted(set(steps)) == list(range(1, 17)) and steps.count(7) == 1
