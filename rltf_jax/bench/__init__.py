"""Benchmarks (commands, not tests): `python -m rltf_jax.bench pretrain|sample|dpo --help`."""
