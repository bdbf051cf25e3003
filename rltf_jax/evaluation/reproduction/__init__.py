"""Deprecated: `python -m rltf_jax.evaluation.reproduction` still runs for this release; the module is
`rltf_jax.reporting.reproduction` and the command `rltf reproduce`."""
