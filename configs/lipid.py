"""Shim: the config is rltf_jax/configs/lipid.py (shipped with the package)."""

from rltf_jax.configs.lipid import *  # noqa: F401,F403
