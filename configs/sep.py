"""Shim: the config is rltf_jax/configs/sep.py (shipped with the package)."""

from rltf_jax.configs.sep import *  # noqa: F401,F403
