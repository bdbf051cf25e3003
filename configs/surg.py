"""Shim: the config is rltf_jax/configs/surg.py (shipped with the package)."""

from rltf_jax.configs.surg import *  # noqa: F401,F403
