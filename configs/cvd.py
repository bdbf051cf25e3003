"""Shim: the config is rltf_jax/configs/cvd.py (shipped with the package)."""

from rltf_jax.configs.cvd import *  # noqa: F401,F403
