"""Deprecated entry point; see `__init__.py`."""

from rltf_jax.errors import cli_main
from rltf_jax.reporting.report import main

cli_main(main)
