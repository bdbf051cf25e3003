"""Shims: the sweep configs are rltf_jax/configs/sweeps/ (shipped with the package)."""
