"""Shim: the config is rltf_jax/configs/scd.py (shipped with the package)."""

from rltf_jax.configs.scd import *  # noqa: F401,F403
