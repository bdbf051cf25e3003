"""Shim: the sweep config is rltf_jax/configs/sweeps/table2_ablation.py (shipped with the package)."""

from rltf_jax.configs.sweeps.table2_ablation import *  # noqa: F401,F403
