"""Shim: the config is rltf_jax/configs/cond.py (shipped with the package)."""

from rltf_jax.configs.cond import *  # noqa: F401,F403
