"""Shared benchmark pieces: the matmul ceiling, peak memory, FLOPs of a compiled program, JSON output."""

from __future__ import annotations

import json
import resource
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np

from rltf_jax.configs import base as base_config
from rltf_jax.models import precision


def matmul_ceiling_gflops(n: int = 2048, repeats: int = 5, dtype: str = "float32",
                          clock=time.perf_counter) -> float:
  """Best-of-`repeats` GFLOP/s of a jitted n x n matmul on the default device: the ceiling that
  model FLOP utilisation is quoted against. `dtype` "bfloat16" measures what the model's bf16
  compute runs (bf16 operands, float32 accumulation and result; see `rltf_jax.models.precision`).
  `clock=time.process_time`: GFLOP per CPU-second of this process (all its threads) instead."""
  a = jax.random.normal(jax.random.key(0), (n, n), precision.compute_dtype(dtype))
  b = jax.random.normal(jax.random.key(1), (n, n), precision.compute_dtype(dtype))
  f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
  return 2.0 * n ** 3 / time_call(f, a, b, repeats=repeats, stat=min, clock=clock) / 1e9


def read_bandwidth_gbps(megabytes: int = 256, repeats: int = 5) -> float:
  """Best-of-`repeats` GB/s of a jitted sum over a float32 buffer far larger than the caches: the
  memory ceiling of a step that streams its data (the sampler's KV cache) once."""
  x = jnp.ones(megabytes * 2 ** 20 // 4, jnp.float32)
  return x.nbytes / time_call(jax.jit(jnp.sum), x, repeats=repeats, stat=min) / 1e9


def time_call(f, *args, repeats: int = 20, stat=np.median, clock=time.perf_counter) -> float:
  """`stat` (median; `min` for a ceiling) of the seconds of `repeats` calls `f(*args)`, results
  waited for, after one untimed call (compilation). `clock`: wall time by default;
  `time.process_time` counts the CPU seconds of all this process's threads."""
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    t = clock()
    jax.block_until_ready(f(*args))
    times.append(clock() - t)
  return float(stat(times))


def add_dtype_flag(parser) -> None:
  """`--dtype`: the model's compute dtype (`model.compute_dtype`, default the base config's)."""
  parser.add_argument("--dtype", default=base_config.get_config().model.compute_dtype,
                      choices=sorted(precision.COMPUTE_DTYPES),
                      help="model.compute_dtype: the matmul operands")


def ceilings(dtype: str) -> dict[str, float]:
  """The matmul ceiling MFU is quoted against (that of `dtype`) and the float32 one beside it,
  each measured once."""
  ceiling = matmul_ceiling_gflops(dtype=dtype)
  f32 = ceiling if dtype == "float32" else matmul_ceiling_gflops()
  return dict(ceiling_gflops=ceiling, ceiling_f32_gflops=f32)


def compiled_flops(compiled) -> float:
  """FLOPs of a compiled XLA program from its cost analysis (0 when the backend gives none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get("flops", 0.0))


def peak_rss_mb() -> float:
  """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class PeakAnonymous:
  """Samples this process's anonymous resident memory (`RssAnon` of /proc/self/status: the heap,
  not the pages of mapped files, which the kernel can drop) every `every_s` seconds while open;
  `.mb` is the largest sample in MiB (0 off Linux). `ru_maxrss` counts the touched pages of a
  memory-mapped dataset too, so it grows with what a stage reads; this is what has to fit."""

  def __init__(self, every_s: float = 0.02):
    self.every_s, self.mb = every_s, 0.0
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._sample, daemon=True)

  def _sample(self):
    while True:
      try:
        with open("/proc/self/status") as f:
          kb = next((int(l.split()[1]) for l in f if l.startswith("RssAnon:")), 0)
      except OSError:
        return
      self.mb = max(self.mb, kb / 1024.0)
      if self._stop.wait(self.every_s):
        return

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()


def print_result(result: dict) -> None:
  """The figures as one JSON object on the last line of output, for scripts to compare."""
  clean = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in result.items()}
  print(json.dumps(clean, sort_keys=True), flush=True)
