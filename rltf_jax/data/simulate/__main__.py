"""`python -m rltf_jax.data.simulate ...`: the simulator's command line (see `cli.py`)."""

from rltf_jax.commands.simulate import main
from rltf_jax.errors import cli_main

cli_main(main)
