"""Shim: the sweep config is rltf_jax/configs/sweeps/rarity_levers.py (shipped with the package)."""

from rltf_jax.configs.sweeps.rarity_levers import *  # noqa: F401,F403
