"""Deprecated: `python -m rltf_jax.evaluation.report` still runs for this release; the module is
`rltf_jax.reporting.report` and the command `rltf report`."""
