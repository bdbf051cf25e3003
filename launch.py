"""Runs one experiment from a config: `python launch.py --config=configs/scd.py [--workdir=DIR]`.

Everything happens in `rltf_jax.pipeline`; this file only parses flags.
"""

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "experiment config file (e.g. configs/scd.py:smoke)",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "work directory (default: runs/<cohort>-<size>)")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  from rltf_jax import pipeline
  from rltf_jax.errors import cli_main
  cli_main(lambda: pipeline.run(flags.FLAGS.config, flags.FLAGS.workdir))


if __name__ == "__main__":
  app.run(main)
