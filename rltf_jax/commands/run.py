"""`rltf run --config=CONFIG[:arg] [--workdir=DIR] [--config.<field>=value ...]`: one experiment
(data, base model, each method's training, evaluation, privacy, report), as `launch.py` runs it.

CONFIG is a config file (`configs/scd.py` in a clone) or a packaged config's name (`scd`,
`scd:smoke`). `--distributed` (one process per host or GPU of a multi-process job, see `launch/`)
starts `jax.distributed` first and runs every stage with every process in lockstep
(`rltf_jax.batch.run_distributed`; pass `--config.mesh.data=0`); `--coordinator-address`, `--num-processes` and `--process-id`
set it up where no scheduler does.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

# The command line's spelling is hyphens (`--process-id`); absl's flags have underscores.
ABSL_SPELLING = {"--coordinator-address": "--coordinator_address",
                 "--num-processes": "--num_processes", "--process-id": "--process_id"}


def normalize(argv: list[str]) -> list[str]:
  """Hyphenated flag names -> absl's, and a packaged config's name -> its file."""
  from rltf_jax import configs
  out = []
  for arg in argv:
    name, eq, value = arg.partition("=")
    name = ABSL_SPELLING.get(name, name)
    if name == "--config" and eq:
      value = configs.resolve(value)
    out.append(name + eq + value)
  for i, arg in enumerate(out[:-1]):  # `--config NAME`
    if arg == "--config":
      out[i + 1] = configs.resolve(out[i + 1])
  return out


def define_flags(argv: list[str]) -> None:
  """The command's flags; `argv` names the `--config.<field>` overrides to define (config_flags
  reads them at definition time)."""
  config_flags.DEFINE_config_file("config", None, "experiment config file or packaged name "
                                  "(e.g. configs/scd.py:smoke, scd:smoke)", lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "work directory (default: runs/<cohort>-<size>)")
  flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() from the environment "
                    "(SLURM, Open MPI, TPU VM), then every stage over all processes (with --config.mesh.data=0)")
  flags.DEFINE_string("coordinator_address", None, "--distributed without a scheduler: host:port of "
                      "process 0 (with --num_processes and --process_id; implies --distributed)")
  flags.DEFINE_integer("num_processes", None, "--distributed without a scheduler: how many processes")
  flags.DEFINE_integer("process_id", None, "--distributed without a scheduler: this process's id")
  flags.mark_flags_as_required(["config"])


def launch(argv: list[str]) -> None:
  """`argv[0]` is the program's name; the rest are flags in the command line's spelling."""
  argv = [argv[0]] + normalize(argv[1:])
  define_flags(argv)
  if any(a in ("-h", "--help", "-help") for a in argv[1:]):  # this command's flags, not absl's own
    print(__doc__.strip() + "\n\nflags:\n" + flags.FLAGS.module_help(sys.modules[__name__]))
    return
  app.run(main, argv=argv)


def main(argv):
  del argv
  from rltf_jax import host_memory
  host_memory.keep_freed_memory()   # before JAX starts its threads
  from rltf_jax import batch
  from rltf_jax.errors import cli_main
  from rltf_jax.reporting import experiment
  f = flags.FLAGS
  cfg, workdir = f.config, f.workdir
  if f.distributed or f.coordinator_address:
    batch.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)  # before any JAX use
    cli_main(lambda: batch.run_distributed(cfg, workdir))
  else:
    cli_main(lambda: experiment.run(cfg, workdir, compilation_cache=True))
