"""Reference log-probabilities of a pair set: computed once, cached on disk, reused.

The DPO loss compares the policy with the frozen reference (the base model). Its log-probabilities
of every chosen and rejected continuation never change, so they are computed in one batched,
jitted pass (`pair_logps` over packed rows, the function the training step differentiates) and
written to `reference-<key>.npz`, where the key hashes the reference parameters' values and the
pair set's fingerprint: a different base checkpoint or other pairs get another file, a rerun or a
resumed fine-tune finds the same one. The reference model never runs during training.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import Mesh

from rltf_jax import io
from rltf_jax.errors import DataError
from rltf_jax.training.mesh import (batch_devices, data_sharding, global_batch, host_arrays,
                                    process_rows, replicated, state_sharding)
from rltf_jax.training.pairs import PackedPairs, bucketed_batch, pair_logps, row_shapes
from rltf_jax.training.preference import PreferenceData

log = logging.getLogger("rltf_jax")

CACHE_VERSION = 1  # bump when the scoring (what a log-probability sums over) changes


def params_fingerprint(params) -> str:
  """Hash of a parameter tree's structure and values (the reference model's identity)."""
  h = hashlib.sha256()
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  for path, leaf in leaves:
    arr = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}:{arr.dtype}:{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:16]


def cache_key(reference_id: str, pairs_fingerprint: str) -> str:
  return hashlib.sha256(f"v{CACHE_VERSION}:{reference_id}:{pairs_fingerprint}".encode()).hexdigest()[:16]


def compute_reference_logps(graphdef, params, packed: PackedPairs, batch_size: int,
                            mesh: Mesh | None = None):
  """(chosen, rejected) float32 [N]: reference log-probabilities of every pair.

  Rows are sorted by length and cut to power-of-two widths, so short pairs do not pay for the
  longest one; each batch has `batch_size` rows (the last one padded), so there is one compile per
  width bucket. On a `mesh` of several devices the rows are split over "data" and "fsdp" and the
  parameters sharded as in training (`training.mesh`); `batch_size` is rounded up to a multiple
  of the devices the rows are split over. Of a multi-process job (a mesh over several processes'
  devices) each process builds only its rows of every batch (`mesh.process_rows`), and every
  process gets all the values (the outputs are replicated).
  """
  share = None
  if mesh is None or mesh.size == 1:
    fn = jax.jit(pair_logps, static_argnums=0)
  else:
    n_dev = batch_devices(mesh)
    batch_size = -(-batch_size // n_dev) * n_dev
    shardings, rows_sharding = state_sharding(mesh, params), data_sharding(mesh)
    params = jax.device_put(host_arrays(params, mesh), shardings)
    sharded = jax.jit(lambda p, b: pair_logps(graphdef, p, b), in_shardings=(shardings, rows_sharding),
                      out_shardings=replicated(mesh))
    fn = lambda _, p, b: sharded(p, global_batch(b, rows_sharding))
    share = slice(*process_rows(rows_sharding, batch_size))
  n = len(packed.tokens)
  shapes = row_shapes(packed)
  order = np.argsort(shapes[0], kind="stable")
  chosen, rejected = np.zeros(n, np.float32), np.zeros(n, np.float32)
  pending = []
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    rows = np.concatenate([idx, np.repeat(idx[:1], batch_size - len(idx))])  # pad the last batch
    mine = rows if share is None else rows[share]
    pending.append((idx, fn(graphdef, params, bucketed_batch(packed, mine, shapes, fit=idx))))
  for idx, (c, r) in pending:  # all batches were dispatched before the first read-back
    chosen[idx] = np.asarray(c)[:len(idx)]
    rejected[idx] = np.asarray(r)[:len(idx)]
  return chosen, rejected


def reference_logps(graphdef, params, pairs: PreferenceData, packed: PackedPairs, cache_dir: str | Path,
                    *, batch_size: int = 32, reference_id: str | None = None, mesh: Mesh | None = None):
  """Cached `compute_reference_logps`; `reference_id` defaults to the parameters' fingerprint.
  The cache does not depend on `mesh`: the values agree to float rounding on any mesh."""
  reference_id = reference_id or params_fingerprint(params)
  path = Path(cache_dir) / f"reference-{cache_key(reference_id, pairs.fingerprint)}.npz"
  if path.exists():
    try:
      got = io.load_npz(path)
    except (OSError, ValueError) as e:
      raise DataError(f"{path}: cannot read cached reference log-probabilities ({e}); delete it "
                      "to recompute") from e
    if got["chosen"].shape != (pairs.num_pairs,):
      raise DataError(f"{path}: holds {got['chosen'].shape} values for {pairs.num_pairs} pairs; "
                      "delete it to recompute")
    log.info("reference log-probs: reusing %s", path)
    return got["chosen"], got["rejected"]
  t0 = time.perf_counter()
  chosen, rejected = compute_reference_logps(graphdef, params, packed, batch_size, mesh)
  if not (np.isfinite(chosen).all() and np.isfinite(rejected).all()):
    raise DataError("the reference model gives non-finite log-probabilities for some pairs; "
                    "check the base checkpoint")
  io.atomic_savez(path, chosen=chosen, rejected=rejected,
                  reference_id=np.asarray(reference_id), pairs_fingerprint=np.asarray(pairs.fingerprint))
  log.info("reference log-probs of %d pairs in %.1fs -> %s", pairs.num_pairs, time.perf_counter() - t0, path)
  return chosen, rejected
