"""Shim: the config is rltf_jax/configs/fluid.py (shipped with the package)."""

from rltf_jax.configs.fluid import *  # noqa: F401,F403
