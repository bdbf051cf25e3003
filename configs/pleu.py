"""Shim: the config is rltf_jax/configs/pleu.py (shipped with the package)."""

from rltf_jax.configs.pleu import *  # noqa: F401,F403
