"""Shim: the config is rltf_jax/configs/dys.py (shipped with the package)."""

from rltf_jax.configs.dys import *  # noqa: F401,F403
