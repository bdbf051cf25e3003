"""Shim: the sweep config is rltf_jax/configs/sweeps/rltf_budget.py (shipped with the package)."""

from rltf_jax.configs.sweeps.rltf_budget import *  # noqa: F401,F403
