"""Freed host memory stays with the process, so XLA on CPU does not page-fault it back every step.

Each jitted step allocates its buffers anew (XLA:CPU's temporaries; the default pretraining step's
code head alone writes tens of MB). glibc hands large freed blocks back to the kernel (mmap'd
chunks, and per-thread arenas that shrink), so the next step faults the same pages in again: on
2 cores the default pretraining step took ~45,000 minor page faults and spent more time in the
kernel than in XLA's kernels. One arena, no mmap'd chunks and no trimming keep that memory mapped
and reused: `python -m rltf_jax.bench pretrain --vocab 7900 --width 128 --layers 2 --batch 16
--seq 128 --heads 4 --mlp gelu` runs ~1.7-2x faster with it (docs/benchmarks.md). What it costs:
memory the process frees is kept for its next allocation instead of being returned, so the
resident size stays at its peak. Results are unchanged (where a buffer lives does not change what
XLA computes in it).

The command-line entry points call `keep_freed_memory()` first; a library user may call it too,
before the first JAX computation (XLA's threads pick their arena when they start). The tests do
not: their many small compilations ran ~1.5x slower with it (tests/test_pretrain.py and
tests/test_sampler.py: 61-67 s against 42-44 s), and they time nothing.
`RLTF_HOST_MALLOC=default`, or malloc settings of one's own in `GLIBC_TUNABLES`, leaves glibc as
it is.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_NEVER_TRIM = 2**31 - 1   # bytes of free memory at the heap's top before glibc returns it (int max)

_applied: bool | None = None


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to one arena, no mmap'd chunks and (practically) no trimming; True when
  it did. A no-op returning False off glibc (macOS, musl), when opted out (module docstring) or
  when mallopt refuses; repeated calls return the first call's answer."""
  global _applied
  if _applied is not None:
    return _applied
  _applied = False
  own_settings = "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
  if os.environ.get("RLTF_HOST_MALLOC", "") == "default" or own_settings:
    return _applied
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return _applied
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:
    return _applied
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM)))
  return _applied
