"""The sample bench's floor (rltf_jax.bench.sample._floor) against a hand computation."""

import jax.numpy as jnp
import pytest

from rltf_jax.bench import sample as bench_sample
from rltf_jax.sampling.sampler import Cache


def test_floor_by_hand():
  # Two layers of k and v, each [2, 1, 10, 4] float32: 80 elements, 320 bytes; 1,280 bytes in all.
  layer = jnp.zeros((2, 1, 10, 4), jnp.float32)
  cache = Cache((layer, layer), (layer, layer), jnp.ones((2, 6), bool), jnp.array([6, 6]), ())
  read_gbps, ceiling_gflops = 1e-6, 1e-6  # 1,000 bytes/s and 1,000 FLOP/s
  floor = bench_sample._floor(prefill_flops=5000.0, step_flops=2640.0, cache=cache, new=3,
                              read_gbps=read_gbps, ceiling_gflops=ceiling_gflops)
  # Step: 1,280 bytes at 1,000 B/s = 1.28 s, plus (2,640 - 2 x 320 attention FLOPs) / 1,000 = 2.0 s.
  assert floor["floor_step_s"] == pytest.approx(3.28)
  assert floor["floor_prefill_s"] == pytest.approx(5.0)
  assert floor["floor_batch_s"] == pytest.approx(5.0 + 3 * 3.28)
  # 5,000 + 3 x 2,640 FLOPs in 14.84 s at 1,000 FLOP/s.
  assert floor["floor_mfu"] == pytest.approx(12920.0 / 14.84 / 1000.0)
