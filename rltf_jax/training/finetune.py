"""What the two fine-tunes of the base decoder (DPO-Positive and SFT) share: the run directory,
the batch order, and the call into the training loop. Each of `dpo.py` and `sft.py` holds only
its loss and its batches.

A fine-tune's run directory has the layout of a pretraining run (`load_decoder` reads either):
run.json (identity: the method's config section, the base run's key, the pairs' fingerprint),
model_config.json, vocab.json and start_prior.npz copied from the base run, config.json (the full
config that trained it), latest/ and best/ (= the final parameters), metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from rltf_jax import io, runs
from rltf_jax.checkpoints import copy_decoder_files
from rltf_jax.runs import RunDir
from rltf_jax.training import loop
from rltf_jax.training.mesh import check_batch_divisible, make_mesh
from rltf_jax.training.optimizer import make_optimizer
from rltf_jax.training.preference import PreferenceData

CONFIG_FILE = "config.json"  # the full config of the run that trained a fine-tune


def batch_rows(step: int, num_rows: int, batch_size: int, seed: int) -> np.ndarray:
  """Rows of step `step`: epoch permutations, a pure function of (seed, step) so that a resumed run
  replays the same batches. The last batch of an epoch is filled from the epoch's start."""
  per_epoch = -(-num_rows // batch_size)
  epoch, i = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
  return np.resize(perm, per_epoch * batch_size)[i * batch_size:(i + 1) * batch_size]


# Fields of a method's section that act after training (on its generator), not on the fine-tune.
AFTER_TRAINING = ("calibrate",)


def training_section(section) -> dict:
  """The part of a method's config section that a fine-tune's parameters depend on."""
  return {k: v for k, v in runs.plain(section).items() if k not in AFTER_TRAINING}


def prepare(cfg, method: str, section, base_ckpt_dir: Path, pairs: PreferenceData, workdir: Path):
  """The run directory of a fine-tune (`rltf_jax.runs`): its identity is the method's config
  section and the fingerprints of the base run and the pairs. A new directory gets the files
  `load_decoder` needs (copied from the base run) and the full config."""
  run = RunDir(workdir, method, training_section(section),
               dict(base=runs.finished_key(base_ckpt_dir), pairs=pairs.fingerprint))
  if not run.file.exists():  # the files first: run.json marks a prepared directory
    run.path.mkdir(parents=True, exist_ok=True)
    copy_decoder_files(base_ckpt_dir, run.path)
    io.atomic_write_json(run.path / CONFIG_FILE, runs.plain(cfg))
    run.start()
  return run


def run(cfg, method: str, section, run_dir: RunDir, graphdef, base_params, make_loss_fn, batches,
        total_steps: int, *, stop_after: int | None, verbose: bool, show=()) -> None:
  """The part DPO and SFT share: optimizer, compiled step, the loop, the finished marker."""
  mesh = make_mesh(cfg.mesh)
  check_batch_divisible(section.batch_size, mesh, f"{method}.batch_size")
  optimizer = make_optimizer(section, total_steps)
  init = lambda params: loop.initial_state(params, optimizer)
  key = (method, graphdef, runs.digest(training_section(section)), total_steps)
  step = loop.compile_step(key, lambda: loop.make_step(make_loss_fn(), optimizer), init,
                           jax.eval_shape(init, base_params), mesh)
  result = loop.train(run_dir.path, step, (base_params,), batches, name=method, total_steps=total_steps,
                      log_every=section.log_every, ckpt_every=section.ckpt_every, show=show,
                      stop_after=stop_after, verbose=verbose)
  if result.finished:
    run_dir.finish(steps=total_steps, final=result.metrics)
