"""Shim: the config is rltf_jax/configs/dm.py (shipped with the package)."""

from rltf_jax.configs.dm import *  # noqa: F401,F403
