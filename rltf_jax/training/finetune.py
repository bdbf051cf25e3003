"""What the two fine-tunes of the base decoder (DPO-Positive and SFT) share: the run directory,
the batch order, and the call into the training loop. Each of `dpo.py` and `sft.py` holds only
its loss and its batches.

A fine-tune's run directory has the layout of a pretraining run (`load_decoder` reads either):
run.json (identity: the method's config section, the base run's key, the pairs' fingerprint),
model_config.json, vocab.json and start_prior.npz copied from the base run, config.json (the full
config that trained it), latest/ and best/ (= the final parameters), metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from rltf_jax import io, runs
from rltf_jax.checkpoints import copy_decoder_files
from rltf_jax.runs import RunDir
from rltf_jax.training import dp, loop
from rltf_jax.training.mesh import (batch_devices, check_batch_divisible, data_sharding, host_arrays,
                                    make_mesh, process_rows, sync)
from rltf_jax.training.optimizer import make_optimizer
from rltf_jax.training.preference import PreferenceData

CONFIG_FILE = "config.json"  # the full config of the run that trained a fine-tune
DP_FILE = "dp.json"  # a DP fine-tune's privacy accounting (`rltf_jax.training.dp`)


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
  """The part of a method's config section that a fine-tune's parameters depend on (`dp` only
  when DP is on, so that runs made before DP existed keep their identity)."""
  plain = {k: v for k, v in runs.plain(section).items() if k not in AFTER_TRAINING}
  return dp.identity(plain)


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


def run(cfg, method: str, section, run_dir: RunDir, graphdef, base_params, make_loss_fn, take,
        pairs: PreferenceData, total_steps: int, *, stop_after: int | None, verbose: bool,
        show=()) -> None:
  """The part DPO and SFT share: optimizer, compiled step, the loop, the finished marker.
  `take(rows, fit)` is the batch of pair rows `rows`, cut to the width that holds the rows `fit`:
  epoch permutations (`batch_rows`), or with `section.dp` Poisson-sampled rows with a mask, into
  DP-SGD's step (`rltf_jax.training.dp`). Of a multi-process job each process takes only its own
  rows of every batch (`mesh.process_rows`), cut to the width of the whole batch, as pretraining
  does. On a mesh of several devices the parameters it starts from are passed as numpy
  (`mesh.host_arrays`)."""
  mesh = make_mesh(cfg.mesh)
  check_batch_divisible(section.batch_size, mesh, f"{method}.batch_size")
  optimizer = make_optimizer(section, total_steps)
  init = lambda params: loop.initial_state(params, optimizer)
  key = (method, graphdef, runs.digest(training_section(section)), total_steps)
  if dp.enabled(section):
    plan, make_step, batches = _private(section, pairs, total_steps, mesh, make_loss_fn, optimizer, take)
    key += (plan,)  # its noise multiplier and clipping are constants of the step, and the noise
    # depends on the number of pairs, which the section and the step count do not fix
    show = tuple(show) + ("dp_clipped_fraction",)
  else:
    plan = None
    make_step = lambda: loop.make_step(make_loss_fn(), optimizer)
    mine = own_rows(mesh, section.batch_size)

    def batches(i):
      rows = batch_rows(i, pairs.num_pairs, section.batch_size, section.seed)
      return take(rows[mine], rows)
  step = loop.compile_step(key, make_step, init, jax.eval_shape(init, base_params), mesh)
  result = loop.train(run_dir.path, step, (host_arrays(base_params, mesh),), batches, name=method,
                      total_steps=total_steps, log_every=section.log_every,
                      ckpt_every=section.ckpt_every, show=show, stop_after=stop_after,
                      verbose=verbose)
  if result.finished:
    extra = {}
    if plan is not None:
      extra["dp"] = _write_dp(run_dir.path, plan, pairs, section, total_steps, verbose, method)
    run_dir.finish(steps=total_steps, final=result.metrics, **extra)
  sync(f"{method}: finished")  # run.json written before any process reads it


def _private(section, pairs: PreferenceData, total_steps: int, mesh, make_loss_fn, optimizer, take):
  """(plan, step maker, batches) of DP-SGD over `pairs`."""
  dp.check_one_row_per_patient(pairs.subject_id)
  plan = dp.plan(section, pairs.num_pairs, total_steps, batch_devices(mesh))
  make_step = lambda: loop.make_private_step(
      make_loss_fn(), optimizer, clip_norm=plan.clip_norm, noise_multiplier=plan.noise_multiplier,
      expected_batch=plan.expected_batch, seed=plan.seed)

  mine = own_rows(mesh, plan.max_rows)

  def batches(i):
    rows, mask, _ = dp.poisson_rows(i, plan, int(section.seed))
    return mask[mine], take(rows[mine], rows)

  return plan, make_step, batches


def own_rows(mesh, batch_size: int) -> slice:
  """The rows of a `batch_size`-row batch split over `mesh` that this process builds (every row
  in a single-process job; `mesh.process_rows`)."""
  return slice(*process_rows(data_sharding(mesh), batch_size))


def _write_dp(path: Path, plan, pairs: PreferenceData, section, total_steps: int, verbose: bool,
              method: str) -> dict:
  """`dp.json`: the plan, the spent epsilon and whom it covers (what `describe` reports)."""
  truncated = sum(dp.poisson_rows(i, plan, int(section.seed))[2] for i in range(total_steps))
  covers = ("the preference pairs' patients; the base model and reference were trained on other "
            "patients (the enriched sample's pairs split)" if pairs.params.get("source_split")
            else "the fine-tune's use of the pairs' patients only: they come from the training split, "
                 "on which the (non-private) base model was pretrained")
  info = plan.describe(total_steps, int(truncated), covers)
  io.atomic_write_json(path / DP_FILE, info)
  if verbose:
    print(f"{method}: DP-SGD spent epsilon {info['spent_epsilon']:.3f} (target {plan.target_epsilon}, "
          f"delta {plan.delta:g}, noise multiplier {plan.noise_multiplier:.3f}, clip {plan.clip_norm})",
          flush=True)
  return info


def dp_info(run_path: str | Path) -> dict:
  """A finished fine-tune's DP record (`dp.json`), or {"enabled": False} without one."""
  path = Path(run_path) / DP_FILE
  return json.loads(path.read_text()) if path.exists() else dict(enabled=False)
