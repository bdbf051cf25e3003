"""The device mesh and the shardings of train states and batches, from `cfg.mesh`.

The mesh has three axes, each sized by the field of the same name in `cfg.mesh`:
- "data": plain data parallelism (the state whole on every device);
- "fsdp": data parallelism whose parameters and optimiser state are split too (each device holds
  a slice of every large matrix; XLA gathers a weight where a matmul needs it and reduce-scatters
  its gradient);
- "tensor": a size-1 axis today; the rules below already name the dimensions it would split.
Batch rows are split over "data" and "fsdp" together.

Parameters are sharded in two steps, as MaxText does with its logical axis rules: `PARAM_AXES`
names each dimension of a parameter by its path ("embed", "vocab", "mlp", ...), and
`LOGICAL_RULES` maps those names to mesh axes. Tensor parallelism is then a change of rules and
of `cfg.mesh.tensor`, not of model code. A dimension stays whole where its mesh axis does not
divide it, or is already used by another dimension of the same array. Paths no rule names (the
baselines' models) split their largest dimension that "fsdp" divides.
The optimiser state holds copies of the parameter tree (Adam's moments), whose paths end like the
parameters' own, so the same rules shard it.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rltf_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (pattern searched in a "/"-joined parameter path, logical name of each dimension). First match
# wins, so tail_unembed comes before unembed.
PARAM_AXES = (
    (r"code_embed/embedding$", ("vocab", "embed")),
    (r"(_embed|cond_\w+)/embedding$", ("table", "embed")),  # visits, ages, places, attributes
    (r"qkv/kernel$", ("embed", "heads")),
    (r"out/kernel$", ("heads", "embed")),
    (r"up/kernel$", ("embed", "mlp")),
    (r"down/kernel$", ("mlp", "embed")),
    (r"tail_unembed/kernel$", ("rank", "vocab")),
    (r"tail_proj/kernel$", ("embed", "rank")),
    (r"unembed/kernel$", ("embed", "vocab")),
    (r"_head/kernel$", ("embed", "classes")),
    (r"_head/bias$", ("classes",)),
    (r"(scale|age_dir)$", ("norm",)),
)

# Logical name -> mesh axis; names not listed stay whole. Every matrix of the decoder but the
# small tail_unembed has an "embed" dimension, so "fsdp" splits all of them.
LOGICAL_RULES = (
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def axis_sizes(mesh_cfg, num_devices: int) -> dict[str, int]:
  """{axis: size} from `cfg.mesh`; `data=0` takes the devices the other axes leave."""
  # Mesh sections written before "fsdp" and "tensor" existed (tests, saved configs) mean 1.
  sizes = dict(fsdp=int(mesh_cfg.get("fsdp", 1)), tensor=int(mesh_cfg.get("tensor", 1)))
  if min(sizes.values()) < 1:
    raise ConfigError(f"mesh.fsdp and mesh.tensor must be >= 1, got {sizes}")
  rest = sizes["fsdp"] * sizes["tensor"]
  data = int(mesh_cfg.data) or max(1, num_devices // rest)
  return dict(data=data, **sizes)


def make_mesh(mesh_cfg) -> Mesh:
  """The ("data", "fsdp", "tensor") mesh over the first data * fsdp * tensor devices.

  Data parallelism and FSDP are therefore config changes: `--config.mesh.data=2
  --config.mesh.fsdp=2`; `mesh.data=0` uses every device the other axes leave."""
  devices = jax.devices()
  sizes = axis_sizes(mesh_cfg, len(devices))
  n = int(np.prod(list(sizes.values())))
  if n > len(devices):
    raise ConfigError(f"mesh {sizes} needs {n} devices but only {len(devices)} are visible "
                      "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)")
  return Mesh(np.asarray(devices[:n]).reshape([sizes[a] for a in MESH_AXES]), MESH_AXES)


def single_device_mesh() -> Mesh:
  """The mesh of the first device (models too small to be worth splitting)."""
  return Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1, 1), MESH_AXES)


def batch_devices(mesh: Mesh) -> int:
  """How many ways batch rows are split."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data" and "fsdp"; other axes whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# ---------------------------------------------------------------------------- several processes
# Of a multi-process job (`jax.distributed`), each process builds only the rows of a batch that its
# own devices hold (`process_rows`), and `global_batch` joins the shares into one array; process 0
# alone writes files (`rltf_jax.io`), and `sync` keeps the others from reading them too early.
def process_rows(sharding: NamedSharding, batch_size: int) -> tuple[int, int]:
  """[lo, hi): the rows of a `batch_size`-row batch split by `sharding` that this process's
  devices hold (all of them in a single-process job)."""
  held = sharding.addressable_devices_indices_map((batch_size,)).values()
  rows = sorted({i for index in held for i in range(batch_size)[index[0]]})
  lo, hi = rows[0], rows[-1] + 1
  if len(rows) != hi - lo:  # make_mesh orders devices by process, so the share is contiguous
    raise ConfigError(f"this process holds batch rows {rows}, not one contiguous range")
  return lo, hi


def global_batch(local, sharding: NamedSharding):
  """One batch on the devices of `sharding` from this process's rows of it (`process_rows`)."""
  if sharding.is_fully_addressable:
    return jax.device_put(local, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def host_arrays(tree, mesh: Mesh):
  """A tree held whole on one device (parameters read from a checkpoint) as jit and `device_put`
  accept it for a `mesh` of several devices: numpy, taken as the same value on every process (an
  array committed to one device is refused there, and of several processes that device is not
  even this process's own). Unchanged for a one-device mesh."""
  return tree if mesh.size == 1 else jax.device_get(tree)


def sync(name: str) -> None:
  """A barrier across the processes of a multi-process job (nothing in a single-process one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def check_batch_divisible(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
  n = batch_devices(mesh)
  if batch_size % n:
    raise ConfigError(f"{what}={batch_size} is not divisible by the {n} devices of mesh.data x mesh.fsdp")


# ---------------------------------------------------------------------------- parameter shardings
def path_name(path) -> str:
  """A pytree key path as "blocks/0/qkv/kernel" (dict keys, attribute names and indices)."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return "/".join(parts)


def logical_axes(name: str, ndim: int, param_axes=PARAM_AXES) -> tuple | None:
  """The logical name of each dimension of the parameter at path `name` (None: no rule names it)."""
  for pattern, axes in param_axes:
    if re.search(pattern, name) and len(axes) == ndim:
      return axes
  return None


def param_spec(mesh: Mesh, name: str, shape, *, param_axes=PARAM_AXES,
               rules=LOGICAL_RULES) -> P:
  """The PartitionSpec of one array of the state (see the module docstring)."""
  if len(shape) == 0:
    return P()
  rule = dict(rules)
  axes = logical_axes(name, len(shape), param_axes)
  if axes is None:
    # Unnamed: the largest dimension "fsdp" divides (the first of equal ones), if any.
    want = [None] * len(shape)
    fits = [i for i, d in enumerate(shape) if d % mesh.shape["fsdp"] == 0]
    if len(shape) >= 2 and fits:
      want[max(fits, key=lambda i: (shape[i], -i))] = "fsdp"
  else:
    want = [rule.get(a) for a in axes]
  spec, used = [], set()
  for dim, axis in zip(shape, want):
    ok = axis is not None and axis not in used and mesh.shape[axis] > 1 and dim % mesh.shape[axis] == 0
    spec.append(axis if ok else None)
    if ok:
      used.add(axis)
  return P(*spec)


def state_sharding(mesh: Mesh, state_abstract, **kwargs):
  """NamedShardings of a train state (params, optimiser state, step) by `param_spec`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, param_spec(mesh, path_name(path), x.shape, **kwargs)),
      state_abstract)
