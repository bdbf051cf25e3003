"""Runs one experiment from a config: `python launch.py --config=configs/scd.py [--workdir=DIR]`.

Everything happens in `rltf_jax.pipeline`; this file only parses flags. `--distributed` (one
process per host or GPU of a multi-process job, see `launch/`) starts `jax.distributed` first and
builds the data and the base model with every process (`rltf_jax.batch.run_distributed`);
`--coordinator_address`, `--num_processes` and `--process_id` set it up where no scheduler does.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "experiment config file (e.g. configs/scd.py:smoke)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "work directory (default: runs/<cohort>-<size>)")
flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() from the environment "
                  "(SLURM, Open MPI, TPU VM), then the data and base model over all processes")
flags.DEFINE_string("coordinator_address", None, "--distributed without a scheduler: host:port of "
                    "process 0 (with --num_processes and --process_id; implies --distributed)")
flags.DEFINE_integer("num_processes", None, "--distributed without a scheduler: how many processes")
flags.DEFINE_integer("process_id", None, "--distributed without a scheduler: this process's id")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from rltf_jax import host_memory
  host_memory.keep_freed_memory()   # before JAX starts its threads
  from rltf_jax import batch, pipeline
  from rltf_jax.errors import cli_main
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  f = flags.FLAGS
  if f.distributed or f.coordinator_address:
    batch.initialize_distributed(f.coordinator_address, f.num_processes, f.process_id)  # before any JAX use
    cli_main(lambda: batch.run_distributed(cfg, workdir))
  else:
    cli_main(lambda: pipeline.run(cfg, workdir, compilation_cache=True))


if __name__ == "__main__":
  app.run(main)
