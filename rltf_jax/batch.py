"""Batch jobs: a sweep as a scheduler's job array around one shared base model (see `launch/`).

  python -m rltf_jax.batch count   --config=configs/sweeps/rare_cohorts.py [--seeds=0,1,2]
  python -m rltf_jax.batch list    --config=... [--seeds=...]
  python -m rltf_jax.batch prepare --config=... --workdir=DIR [--seeds=...] [--distributed]
  python -m rltf_jax.batch task    --config=... --workdir=DIR --index=I [--seeds=...]
  python -m rltf_jax.sweep         --config=... --workdir=DIR [--seeds=...]   # the table, last

A sweep's runs (`rltf_jax.sweep`: one per cohort or setting, times the training seeds) share the
data and, per training seed, the base model. `prepare` builds those once: the data stage and every
distinct base model the runs need (several processes with `--distributed`, see below). `task` runs
run I of the list `list` prints (as `python -m rltf_jax.sweep` would, in its place in the same work
directory) and never trains a base model: the array's tasks run at the same time, so a base
model that `prepare` has not finished is an error naming the command that makes it. The sweep
command itself, run after the array, finds every run finished, skips them and writes the combined
table.

Every stage is resumable (`rltf_jax.runs`), so each of these commands, rerun after a failure, a
time limit or a preemption (trainers exit with status 143 on SIGTERM after a checkpoint,
`rltf_jax.preemption`), skips what is finished and resumes what is not.

Why a task has its own directory: a run holds the work directory's lock (`runs.workdir_lock`),
which admits one run at a time. Task I runs in `DIR/tasks/<I>-<cohort dir>/`, holding only
links to the shared data, the base model and its cohort directory `DIR/<cohort>[-<run_name>]/`,
which no other task writes; the outputs therefore land where a sequential sweep puts them.

Several processes (`--distributed`, also `launch.py --distributed`): `jax.distributed.initialize()`
from the environment (SLURM, Open MPI, Cloud TPU VMs fill in the coordinator, process count and
id), before any other JAX use. `prepare` builds the data and the base models this way;
`launch.py --distributed` runs every stage (`run_distributed`), with `--config.mesh.data=0` so
that the mesh spans every process's devices. Every process runs the same pipeline in lockstep:
- the trainers (pretraining, DPO, SFT) and the reference pass split the rows of every batch over
  all devices, each process encoding only its own rows (`training.mesh.process_rows`);
- the sampler (the evaluation's generations, the forecast's K draws, calibration, `synthesize`)
  gives each process its share of every batch's rows and gathers all of them on every process
  (`sampling.sampler.sample`), so every process holds the same generations;
- what is plain numpy (the data stage, the pairs, the metrics, the privacy figures) every process
  computes alike; the privacy scores' forward passes run whole on each process.
Process 0 alone holds the work-directory lock and writes files (`metrics.jsonl`, run.json, the
data, metrics.json; `rltf_jax.io`), and alone writes the report (its plots are not written
through `rltf_jax.io`): the others compute the same bytes and skip the write, and wait at a
barrier after every stage (`training.mesh.sync`) before reading what process 0 wrote.
Checkpoints are written and restored by all processes together (orbax). Process 0 alone prints
progress (the others' standard output is discarded, their standard error kept). The LSTM and HALO
baselines train on one device and are refused here (`check_distributed`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

import jax
from absl import logging as absl_logging

from rltf_jax.configs import base as base_config
from rltf_jax import host_memory, pipeline, runs, sweep
from rltf_jax.reporting import experiment
from rltf_jax.errors import ConfigError, cli_main
from rltf_jax.training import pretrain
from rltf_jax.training.mesh import axis_sizes

TASKS_DIR = "tasks"


# ---------------------------------------------------------------------------- several processes
def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """`jax.distributed.initialize()`, each argument not given taken from the environment (SLURM,
  Open MPI, TPU VM metadata); call it once, before any other JAX use (it fails once the backend
  has started; importing jax does not start it)."""
  given = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id)
  jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
  print(f"[distributed] process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local of {jax.device_count()} devices", flush=True)


def add_process_flags(parser: argparse.ArgumentParser) -> None:
  """--coordinator-address, --num-processes, --process-id (underscores also accepted): a
  multi-process job without a scheduler that fills them in (any of them implies --distributed)."""
  parser.add_argument("--coordinator-address", "--coordinator_address", default=None,
                      help="host:port of process 0")
  parser.add_argument("--num-processes", "--num_processes", type=int, default=None)
  parser.add_argument("--process-id", "--process_id", type=int, default=None)


# ---------------------------------------------------------------------------- data + base model
def build_base(cfg, root: Path) -> Path:
  """The data stage and the base model of `cfg` in `root` (the pipeline's first two stages);
  returns the base model's directory. Finished stages are reused."""
  pipeline.require_fields(cfg, base_config.get_config(cfg.size))
  pipeline.check_ranges(cfg, base_config.RANGES)
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint read at INFO
  pipeline.build_data(cfg, root)
  ctx = pipeline.open_context(cfg, root)
  print(f"[base model] {ctx.base_dir}", flush=True)
  pretrain.pretrain(cfg, ctx.dataset, ctx.vocab, ctx.base_dir)
  return ctx.base_dir


# Methods whose training runs on one device (`training.baselines`): not over several processes.
ONE_PROCESS_METHODS = ("lstm", "halo")


def check_distributed(cfg) -> None:
  """A `ConfigError` before any work when `cfg` cannot run over the processes of this job: its mesh
  must span every device (`mesh.data=0`), and the baselines train on one device only."""
  if jax.process_count() == 1:
    return
  sizes = axis_sizes(cfg.mesh, jax.device_count())
  used = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
  if used != jax.device_count():
    raise ConfigError(f"--distributed: the mesh {sizes} uses {used} of the job's {jax.device_count()} "
                      f"devices ({jax.process_count()} processes); every stage splits its rows over "
                      "all of them: pass --config.mesh.data=0")
  single = [m for m in cfg.methods if m in ONE_PROCESS_METHODS]
  if single:
    raise ConfigError(f"--distributed: methods {', '.join(single)} train on one device, not over "
                      "several processes; run them in a job of one process (finished stages are "
                      "reused) or leave them out of --config.methods")


def run_distributed(cfg, workdir: str | None) -> int:
  """`launch.py --distributed`: every stage of the experiment, each process of the job running the
  pipeline in lockstep with the others (module docstring; docs/running.md)."""
  check_distributed(cfg)
  if jax.process_index() == 0:
    return experiment.run(cfg, workdir)
  # The others run the same stages in lockstep: their progress lines would repeat process 0's
  # (warnings and errors go to stderr, which stays).
  with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
    return experiment.run(cfg, workdir)


# ---------------------------------------------------------------------------- a sweep as tasks
def sweep_tasks(spec: str, seeds: str | None = None):
  """(the sweep's shared config, its name, [(config, run)]): one task per run and seed, in
  `rltf_jax.sweep`'s order."""
  base_cfg, sweep_runs, name, default_seeds = sweep.load_sweep(spec)
  chosen = sweep.parse_seeds(seeds) if seeds is not None else default_seeds
  out = []
  for run in sweep.with_seeds(base_cfg, sweep_runs, chosen):
    cfg = sweep.apply_overrides(base_cfg, run.get("overrides", {}))
    cfg.run_name = run.get("run_name", run["name"])
    out.append((cfg, run))
  return base_cfg, name, out


def _label(index: int, cfg) -> str:
  return f"{index:03d}-{pipeline.cohort_dir_of(cfg, Path('.')).name}"


def prepare(spec: str, workdir: str | None = None, seeds: str | None = None) -> int:
  """The data and every distinct base model of the sweep's tasks."""
  base_cfg, name, tasks = sweep_tasks(spec, seeds)
  root = pipeline.workdir_of(base_cfg, workdir)
  done = set()
  with runs.workdir_lock(root):
    for cfg, _ in tasks:
      key = pipeline.base_digest(cfg)  # what names a base model's directory
      if key not in done:
        build_base(cfg, root)
        done.add(key)
  print(f"[{name}] {len(done)} base model(s) ready for {len(tasks)} tasks in {root}", flush=True)
  return 0


def run_task(spec: str, index: int, workdir: str | None = None, seeds: str | None = None) -> int:
  """Task `index` of the sweep: its run, in its own lock directory (module docstring)."""
  base_cfg, name, tasks = sweep_tasks(spec, seeds)
  if not 0 <= index < len(tasks):
    raise ConfigError(f"task index {index} is out of range: sweep {name} has {len(tasks)} tasks "
                      f"(0..{len(tasks) - 1})")
  root = pipeline.workdir_of(base_cfg, workdir)
  cohort_dirs = [pipeline.cohort_dir_of(c, root) for c, _ in tasks]
  cfg, run = tasks[index]
  mine = cohort_dirs[index]
  if cohort_dirs.count(mine) > 1:
    raise ConfigError(f"sweep {name}: several tasks write {mine}; give their runs distinct "
                      "run_name values so that the array's tasks never share a directory")
  data = pipeline.data_dir(cfg, root)
  prepare_cmd = f"python -m rltf_jax.batch prepare --config={spec} --workdir={root}"
  if not runs.is_done(data):
    raise ConfigError(f"{data}: the shared data is not built; run `{prepare_cmd}` first")
  base = pipeline.open_context(cfg, root).base_dir
  if not runs.is_done(base):
    raise ConfigError(f"{base}: the shared base model is not finished (tasks never train it: they "
                      f"run at the same time); run `{prepare_cmd}` first")
  own = root / TASKS_DIR / _label(index, cfg)
  own.mkdir(parents=True, exist_ok=True)
  mine.mkdir(parents=True, exist_ok=True)
  for target in (data, base, mine):
    link = own / target.name
    if not link.is_symlink():
      link.symlink_to(os.path.relpath(target, own))  # relative: the work directory can move
  label = run["name"] + (f" seed {run['seed']}" if run["seed"] else "")
  print(f"=== [{name} task {index}/{len(tasks)}] {label}: cohort {cfg.cohort}, methods "
        f"{', '.join(cfg.methods)}, outputs in {mine}", flush=True)
  return experiment.run(cfg, str(own))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("command", choices=("count", "list", "prepare", "task"))
  parser.add_argument("--config", required=True, help="sweep config, e.g. configs/sweeps/rare_cohorts.py:paper")
  parser.add_argument("--workdir", default=None, help="work directory shared by every task")
  parser.add_argument("--seeds", default=None, help="training seeds (default: the sweep's)")
  parser.add_argument("--index", type=int, default=None,
                      help="task: which run (default: $SLURM_ARRAY_TASK_ID)")
  parser.add_argument("--distributed", action="store_true",
                      help="prepare: jax.distributed.initialize() from the environment first")
  add_process_flags(parser)
  args = parser.parse_args(argv)
  host_memory.keep_freed_memory()
  if args.distributed or args.coordinator_address:
    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

  def command() -> int:
    if args.command in ("count", "list"):
      _, _, tasks = sweep_tasks(args.config, args.seeds)
      if args.command == "count":
        print(len(tasks))
      for i, (cfg, run) in enumerate(tasks if args.command == "list" else ()):
        print(f"{i}\t{_label(i, cfg)}\t{run['name']}\tseed {run['seed']}")
      return 0
    if args.command == "prepare":
      return prepare(args.config, args.workdir, args.seeds)
    index = args.index if args.index is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if index is None:
      raise ConfigError("task needs --index (or $SLURM_ARRAY_TASK_ID in a SLURM job array)")
    return run_task(args.config, int(index), args.workdir, args.seeds)

  cli_main(command)


if __name__ == "__main__":
  main()
