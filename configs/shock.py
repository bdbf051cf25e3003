"""Shim: the config is rltf_jax/configs/shock.py (shipped with the package)."""

from rltf_jax.configs.shock import *  # noqa: F401,F403
