"""Shim: the config is rltf_jax/configs/pneu.py (shipped with the package)."""

from rltf_jax.configs.pneu import *  # noqa: F401,F403
