"""The device mesh and the shardings of train states and batches, from `cfg.mesh`."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rltf_jax.errors import ConfigError


def make_mesh(mesh_cfg) -> Mesh:
  """A 1-D ("data",) mesh over the first `mesh_cfg.data` devices (0: all devices).

  Data parallelism is therefore a config change: `--config.mesh.data=4`.
  """
  n = int(mesh_cfg.data)
  devices = jax.devices()
  n = n or len(devices)
  if n > len(devices):
    raise ConfigError(f"mesh.data={n} but only {len(devices)} devices are visible "
                      "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
  return Mesh(np.asarray(devices[:n]), ("data",))


def single_device_mesh() -> Mesh:
  """The ("data",) mesh of the first device (models too small to be worth splitting)."""
  return Mesh(np.asarray(jax.devices()[:1]), ("data",))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data"; other axes whole."""
  return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = mesh.shape["data"]
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of mesh.data")
