"""The configs ship inside the package (`rltf_jax/configs/`); each file here is a shim that keeps
`python launch.py --config=configs/<name>.py[:arg]` and `from configs import base` working."""

from rltf_jax.configs import base, simulator  # noqa: F401  (`from configs import base` in your own configs)
