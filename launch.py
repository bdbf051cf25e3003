"""Runs one experiment from a config: `python launch.py --config=configs/scd.py [--workdir=DIR]`.

The same as `rltf run` (`rltf_jax/commands/run.py` defines the flags and says what they do); this
file only hands it the command line, as nanodo's `main.py` does.
"""

import sys

from rltf_jax.commands import run

if __name__ == "__main__":
  run.launch(sys.argv)
