"""Shim: the sweep config is rltf_jax/configs/sweeps/seeds.py (shipped with the package)."""

from rltf_jax.configs.sweeps.seeds import *  # noqa: F401,F403
