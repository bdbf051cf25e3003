"""Shim: the config is rltf_jax/configs/resp.py (shipped with the package)."""

from rltf_jax.configs.resp import *  # noqa: F401,F403
