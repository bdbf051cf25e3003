"""Shim: the config is rltf_jax/configs/ami.py (shipped with the package)."""

from rltf_jax.configs.ami import *  # noqa: F401,F403
