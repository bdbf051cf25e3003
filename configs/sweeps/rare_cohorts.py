"""Shim: the sweep config is rltf_jax/configs/sweeps/rare_cohorts.py (shipped with the package)."""

from rltf_jax.configs.sweeps.rare_cohorts import *  # noqa: F401,F403
