"""Preemption: SIGTERM ends a trainer at a step boundary, with a checkpoint, and a rerun resumes.

Batch schedulers (SLURM at a time limit or a preemption, Cloud TPU maintenance, Kubernetes) send
SIGTERM some time before they kill a job. While `rltf_jax.training.loop.train` runs, SIGTERM only
raises a flag: the loop finishes the step it is on, saves `latest/` (waiting for the write), and
raises `Preempted`, which ends the process with `PREEMPTED_STATUS`. A rerun of the same command
resumes from that checkpoint (every trainer resumes from `latest/`; finished stages are reused).

`Preempted` is a `SystemExit`, so nothing on the way out mistakes it for a failure: the sweep,
which keeps going past a failed run (`except Exception`), stops instead, and `errors.cli_main`
and absl's `app.run` let it through to the interpreter, which exits with its status.

Outside a trainer (building data, generating, evaluating) SIGTERM keeps its default action: the
process ends at once. Finished stages are on disk, so a rerun redoes only the stage in progress.

With several processes (`jax.distributed`), every process must stop at the same step, or the
collective checkpoint write would wait forever: JAX's preemption service (on by default in
`jax.distributed.initialize`) catches SIGTERM itself and agrees a step across the processes
(`multihost_utils.reached_preemption_sync_point`), so no Python handler is installed there. That
service holds SIGTERM for the whole process: outside a trainer a multi-process job ignores it
(until the scheduler's SIGKILL).
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

# 128 + SIGTERM (15): what a shell reports for a process ended by SIGTERM, so a job script that
# tests for "killed by the scheduler" sees the same status from a preempted trainer.
PREEMPTED_STATUS = 143


class Preempted(SystemExit):
  """A trainer stopped on SIGTERM after saving its checkpoint; exits with `PREEMPTED_STATUS`."""

  def __init__(self, message: str):
    super().__init__(PREEMPTED_STATUS)
    self.message = message

  def __str__(self) -> str:
    return self.message


class Watch:
  """While entered, whether SIGTERM asked training to stop (`requested(step)`, called once per
  step). One process: a SIGTERM handler sets a flag (the previous handler comes back on exit).
  Several: JAX's preemption service decides (see the module docstring)."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self._multi = False

  def __enter__(self) -> "Watch":
    self._multi = jax.process_count() > 1
    # signal.signal works only in the main thread; a trainer run elsewhere (a notebook's worker
    # thread) keeps SIGTERM's default action.
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    self._flag.set()  # only a flag: the loop stops at its next step boundary

  def requested(self, step: int) -> bool:
    """Whether to save and stop after `step` (steps done so far, the same on every process)."""
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
