"""Shim: the config is rltf_jax/configs/renal.py (shipped with the package)."""

from rltf_jax.configs.renal import *  # noqa: F401,F403
