"""host_memory.keep_freed_memory: freed blocks stay mapped, so allocating them again costs no
page faults."""

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A fresh process: allocate, touch and free a 64 MB array 20 times; print the minor page faults.
_CHURN = """
import resource, sys
sys.path.insert(0, {repo!r})
from rltf_jax import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "1" else False
import numpy as np
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  a = np.empty(16 * 2**20, np.float32)   # 64 MB: glibc would mmap it, and unmap it when freed
  a.fill(1.0)
  del a
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
"""


def _churn(apply: bool, env=None) -> tuple[bool, int]:
  out = subprocess.run([sys.executable, "-c", _CHURN.format(repo=str(REPO)), "1" if apply else "0"],
                       capture_output=True, text=True, check=True, env=env).stdout.split()
  return out[0] == "True", int(out[1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_back_in():
  applied, tuned = _churn(True)
  _, default = _churn(False)
  assert applied
  # Each allocation faults its pages in again by default (how many faults that is depends on the
  # page size: numpy asks for huge pages where the kernel offers them); kept, only the first does.
  assert tuned < default / 5, (tuned, default)
  import os
  opted_out, faults = _churn(True, env={**os.environ, "RLTF_HOST_MALLOC": "default"})
  assert not opted_out and faults > default / 2, (faults, default)
