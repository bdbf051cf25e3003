"""rltf_jax: synthetic EHR generation of rare disease with reinforcement learning (RLTF), in JAX."""

__version__ = "0.1.0"
