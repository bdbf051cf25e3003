"""Shim: the config is rltf_jax/configs/gi_hem.py (shipped with the package)."""

from rltf_jax.configs.gi_hem import *  # noqa: F401,F403
