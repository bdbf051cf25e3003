"""The one training loop. Pretraining, DPO, SFT, the LSTM and HALO each supply a pure step, an
initial state and a batch function; `train` owns everything else:

- resume: the state comes back from `latest/` when the run directory has one, else from `init`;
- dispatch, then read: step n is dispatched before step n - 1's metrics are read back, so the
  device never waits on Python;
- the NaN guard: a NaN or Inf in `finite_keys` stops training with a `TrainingError` naming the
  step; a checkpoint is written only after its step's metrics were checked, so none holds a
  diverged state;
- checkpoints: `latest/` every `ckpt_every` steps, at evaluations and at the end; `best/` holds the
  parameters with the lowest `best_metric` of the evaluation, or the final ones without one;
- `metrics.jsonl`: one JSON line per logged step and per evaluation; a resumed run first drops the
  lines past its checkpoint, so the file holds each step once;
- the progress line: tokens/s and ETA, leaving compilation, evaluation and checkpointing out;
- preemption: on SIGTERM the step in progress finishes, `latest/` is saved and `Preempted` ends
  the process with status 143 (`rltf_jax.preemption`); a rerun resumes from that step.
  Checkpoints are written asynchronously (orbax), and every write is waited for before `train`
  returns or raises.

A step is `(state, batch) -> (state, metrics)` with state = dict(params, opt_state, step), made by
`make_step` from a loss and jitted once per configuration by `compile_step` (state sharded by
`training.mesh`'s rules and donated, batches split over the mesh's "data" and "fsdp" axes);
`compiled` holds every jitted function. Of a multi-process job, `batches(i)` gives this process's
rows of batch i (`mesh.process_rows`) and `mesh.global_batch` joins them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from rltf_jax import io
from rltf_jax.checkpoints import Checkpointer
from rltf_jax.errors import TrainingError
from rltf_jax.preemption import Preempted, Watch
from rltf_jax.training.mesh import data_sharding, global_batch, replicated, state_sharding

METRICS_FILE = "metrics.jsonl"


# ---------------------------------------------------------------------------- steps
def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation):
  """Pure `(state, batch) -> (state, metrics)` from `loss_fn(params, batch) -> (loss, metrics)`;
  the metrics gain the loss and the gradient, parameter and update norms."""

  def step(state, batch):
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params), update_norm=optax.global_norm(updates))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1), metrics

  return step


def make_private_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, clip_norm: float,
                      noise_multiplier: float, expected_batch: float, seed: int):
  """DP-SGD's `(state, (mask_B, batch)) -> (state, metrics)` (`rltf_jax.training.dp`): the
  gradient of each row of `batch` alone (`jax.vmap` over rows, each a batch of one), clipped to L2
  norm `clip_norm`, summed over the rows with mask 1, plus Gaussian noise of standard deviation
  `noise_multiplier * clip_norm` per coordinate (key: `seed` folded with the step, so a resumed run
  draws the same noise), divided by `expected_batch`; then the optimiser as `make_step`'s.
  Metrics are means over the masked rows (`tokens` a sum), with the clipped rows' fraction."""

  def row_loss(params, row):
    return loss_fn(params, jax.tree.map(lambda x: x[None], row))

  def step(state, batch):
    mask_B, rows = batch
    (loss_B, metrics_B), grads_B = jax.vmap(jax.value_and_grad(row_loss, has_aux=True),
                                            in_axes=(None, 0))(state["params"], rows)
    norm_B = jnp.sqrt(sum(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1)
                          for g in jax.tree.leaves(grads_B)))
    scale_B = mask_B * jnp.minimum(1.0, clip_norm / jnp.maximum(norm_B, 1e-30))
    summed = jax.tree.map(lambda g: jnp.tensordot(scale_B, g, axes=1), grads_B)
    leaves, treedef = jax.tree.flatten(summed)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), state["step"]), len(leaves))
    noisy = [(g + noise_multiplier * clip_norm * jax.random.normal(k, g.shape, g.dtype)) / expected_batch
             for g, k in zip(leaves, keys)]
    grads = jax.tree.unflatten(treedef, noisy)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    used = jnp.maximum(mask_B.sum(), 1.0)
    mean = lambda x: jnp.sum(mask_B * x) / used
    metrics = {k: (jnp.sum(mask_B * v) if k == "tokens" else mean(v)) for k, v in metrics_B.items()}
    metrics = dict(metrics, loss=mean(loss_B), grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params), update_norm=optax.global_norm(updates),
                   dp_rows=mask_B.sum(), dp_clipped_fraction=mean(norm_B > clip_norm),
                   dp_example_grad_norm=mean(norm_B))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1), metrics

  return step


def initial_state(params, optimizer: optax.GradientTransformation) -> dict:
  return dict(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """A jitted step and initial state, with the shardings of the state and the batches."""
  step: Callable
  init: Callable
  state_abstract: Any
  state_sharding: Any
  batch_sharding: Any


# Everything compiled, by configuration, so that a resumed run in the same process (tests,
# notebooks, sweeps) does not compile again. The only cache of compiled functions in the project.
_COMPILED: dict[Hashable, Any] = {}


def compiled(key: Hashable, build: Callable[[], Any]) -> Any:
  """`build()` once per `key` (a jitted function, or a `CompiledStep`)."""
  if key not in _COMPILED:
    _COMPILED[key] = build()
  return _COMPILED[key]


def compile_step(key: Hashable, make: Callable[[], Callable], init: Callable, state_abstract,
                 mesh: Mesh) -> CompiledStep:
  """`jax.jit` of `make()` (a pure step): state sharded by `training.mesh.state_sharding`
  (split over "fsdp"; whole where that axis has size 1) and donated, batches split over "data" and "fsdp";
  `init` (the initial state from its arguments) jitted to materialise the state directly in its
  sharded layout.

  `key` names everything the step depends on (model graph, config, step count); the shape and
  devices of `mesh` are added to it."""
  def build():
    sharding = state_sharding(mesh, state_abstract)
    step = jax.jit(make(), in_shardings=(sharding, data_sharding(mesh)),
                   out_shardings=(sharding, replicated(mesh)), donate_argnums=0)
    # The abstract state carries the shardings, so a resumed state is read straight into them.
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            state_abstract, sharding)
    return CompiledStep(step, jax.jit(init, out_shardings=sharding), abstract, sharding,
                        data_sharding(mesh))
  return compiled(("step", key, tuple(mesh.shape.items()), tuple(mesh.devices.flat)), build)


# ---------------------------------------------------------------------------- the loop
@dataclasses.dataclass
class Result:
  finished: bool           # all `total_steps` ran (else `stop_after` ended the call)
  metrics: dict            # the last step's metrics
  best: float              # the lowest `best_metric` seen (inf without an evaluation)
  evaluation: dict         # the last evaluation's numbers


def train(run_dir: str | Path, step: CompiledStep, init_args: tuple, batches: Callable[[int], Any], *, name: str, total_steps: int, log_every: int,
          ckpt_every: int, eval_every: int = 0, evaluate: Callable[[Any], dict] | None = None,
          best_metric: str = "valid_loss", finite_keys=("loss", "grad_norm", "param_norm"),
          show=(), log_fields: Callable[[int], dict] | None = None, stop_after: int | None = None,
          verbose: bool = True) -> Result:
  """Runs steps [resumed step, total_steps) of `step` over `batches(i)` (see the module doc).

  `step.init(*init_args)` gives the initial state (called only when there is no checkpoint). `evaluate(params)`
  runs every `eval_every` steps and at the end; `show` names metrics printed on the progress line;
  `log_fields(step)` adds fields to each logged line (the baselines' epoch). `stop_after` ends the
  call after that many steps, as an interruption would (tests use it).
  """
  run_dir = Path(run_dir)
  ckpt = Checkpointer(run_dir, asynchronous=True)
  try:
    with Watch() as preemption:
      return _train(run_dir, ckpt, preemption, step, init_args, batches, name=name,
                    total_steps=total_steps, log_every=log_every, ckpt_every=ckpt_every,
                    eval_every=eval_every, evaluate=evaluate, best_metric=best_metric,
                    finite_keys=finite_keys, show=show, log_fields=log_fields,
                    stop_after=stop_after, verbose=verbose)
  finally:
    ckpt.close()  # waits for the background writes, also on the way out of an error


def _train(run_dir: Path, ckpt: Checkpointer, preemption: Watch, step: CompiledStep, init_args,
           batches, *, name, total_steps, log_every, ckpt_every, eval_every, evaluate, best_metric,
           finite_keys, show, log_fields, stop_after, verbose) -> Result:
  writer = MetricsWriter(run_dir / METRICS_FILE)
  restored = ckpt.restore_latest(step.state_abstract)
  if restored is None:
    state, start, best, last_eval = step.init(*init_args), 0, math.inf, {}
  else:
    state, meta = restored
    state = jax.device_put(state, step.state_sharding)
    start, best = int(meta["step"]), float(meta.get("best", math.inf))
    last_eval = dict(meta.get("evaluation", {}))
    if verbose:
      print(f"{name}: resuming {run_dir} from step {start}", flush=True)
  writer.truncate_after(start)
  progress = Progress(total_steps, name=name)
  last: dict = {}

  def note() -> str:
    step = ckpt.latest_step()
    return (f"The last good checkpoint (step {step}) is kept in {run_dir / 'latest'}. "
            if step is not None else "No checkpoint was written yet. ")

  def record(i: int, metrics) -> None:
    m = to_host(metrics)
    check_finite(m, i + 1, keys=finite_keys, checkpoint_note=note(), run_dir=run_dir)
    progress.count(i, m.get("tokens", 0.0))
    last.clear()
    last.update(m)
    if (i + 1) % log_every == 0 or i + 1 == total_steps:
      rate, _ = progress.rates(i)
      extra = log_fields(i + 1) if log_fields else {}
      writer.write(dict(m, **extra, step=i + 1, tokens_per_s=rate, time=time.time()))
      if verbose:
        progress.line(i, m["loss"], " ".join(f"{k} {m[k]:.3f}" for k in show if k in m))

  end = total_steps if stop_after is None else min(total_steps, start + stop_after)
  pending = None  # (step, device metrics) not yet read back
  for i in range(start, end):
    state, metrics = step.step(state, global_batch(batches(i), step.batch_sharding))
    if pending is not None:
      record(*pending)
    pending = (i, metrics)
    do_eval = evaluate is not None and eval_every > 0 and ((i + 1) % eval_every == 0 or i + 1 == total_steps)
    stop = preemption.requested(i + 1)
    if do_eval or (i + 1) % ckpt_every == 0 or i + 1 == end or stop:
      record(*pending)  # a checkpoint never holds a state whose step diverged
      pending = None
      paused = time.perf_counter()
      if do_eval:
        last_eval = evaluate(state["params"])
        if last_eval:
          writer.write(dict(last_eval, step=i + 1, time=time.time()))
          if verbose:
            print(f"{name} step {i + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()),
                  flush=True)
          if last_eval[best_metric] < best:
            best = last_eval[best_metric]
            ckpt.save_best(i + 1, state["params"], last_eval)
      ckpt.save_latest(i + 1, state, dict(last, best=best, evaluation=last_eval))
      progress.pause(time.perf_counter() - paused)  # evaluation and saving are not training speed
    if stop:
      ckpt.wait()
      message = (f"{name}: SIGTERM: stopped after step {i + 1} of {total_steps} with a checkpoint in "
                 f"{run_dir / 'latest'}; the same command resumes from it")
      print(message, file=sys.stderr, flush=True)
      raise Preempted(message)
  if pending is not None:
    record(*pending)
  finished = end == total_steps
  if finished and ckpt.best_meta() is None:
    # No evaluation chose a best step: the final parameters are the ones to use, so `best/` holds
    # them and every model is loaded the same way.
    ckpt.save_best(total_steps, state["params"], dict(last))
  return Result(finished, dict(last), best, last_eval)


# ---------------------------------------------------------------------------- metrics and progress
def to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Device scalars -> Python floats (one transfer for the whole dict)."""
  return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


def check_finite(metrics: Mapping[str, float], step: int, *, keys=("loss", "grad_norm"),
                 checkpoint_note: str = "", run_dir: Path | None = None) -> None:
  """Raises `TrainingError` when any of `keys` is NaN or Inf. The advice is the one that works:
  the optimiser settings are part of the run's identity, so a retry with other settings needs the
  diverged run's directory out of the way (a rerun with the same settings would diverge again)."""
  bad = [k for k in keys if k in metrics and not math.isfinite(metrics[k])]
  if bad:
    what = ", ".join(f"{k}={metrics[k]}" for k in bad)
    where = f"delete {run_dir} (or use another --workdir)" if run_dir else "use a new run directory"
    raise TrainingError(f"training diverged at step {step} ({what}). {checkpoint_note}"
                        f"To retry with a lower learning rate or a longer warm-up, {where} and rerun "
                        "with the new settings; a rerun with the same settings would diverge again.")


class MetricsWriter:
  """Appends one JSON object per line to `path` (each line written and flushed in one call).

  Of several processes (`jax.distributed`), process 0 alone writes: every process computes the
  same replicated metrics, and appends from all of them would repeat each line."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.enabled = io.writes_files()

  def write(self, record: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    line = json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=True) + "\n"
    with open(self.path, "a") as f:
      f.write(line)
      f.flush()

  def truncate_after(self, step: int) -> None:
    """Drops the lines of steps after `step` (written before an interruption, about to be redone)."""
    if not self.enabled or not self.path.exists():
      return
    lines = self.path.read_text().splitlines(keepends=True)
    keep = [l for l in lines if l.strip() and json.loads(l).get("step", 0) <= step]
    if len(keep) != len(lines):
      io.atomic_write_text(self.path, "".join(keep))


def _plain(v):
  if isinstance(v, (np.generic, np.ndarray)):
    return v.tolist()
  return v


def format_seconds(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{sec:02d}s" if m else f"{sec}s")


class Progress:
  """A progress line: step, loss, tokens/s and ETA. Rates exclude the first (compiling) step."""

  def __init__(self, total_steps: int, *, name: str = "train", stream=None):
    self.total, self.name = total_steps, name
    self.stream = stream or sys.stdout
    self.t0 = None
    self.step0 = 0
    self.tokens = 0.0

  def count(self, step: int, tokens: float) -> None:
    """Records that step `step` (0-based) finished with `tokens` tokens."""
    if self.t0 is None:  # the first step seen includes compilation: start the clock after it
      self.t0, self.step0 = time.perf_counter(), step + 1
    else:
      self.tokens += tokens

  def pause(self, seconds: float) -> None:
    """Leaves `seconds` (evaluation, checkpointing) out of the rate and the ETA."""
    if self.t0 is not None:
      self.t0 += seconds

  def rates(self, step: int) -> tuple[float, float]:
    """(tokens/s, seconds left) after step `step`."""
    if self.t0 is None:
      return float("nan"), float("nan")
    done = step + 1 - self.step0
    elapsed = time.perf_counter() - self.t0
    if done <= 0 or elapsed <= 0:
      return float("nan"), float("nan")
    return self.tokens / elapsed, elapsed / done * (self.total - step - 1)

  def line(self, step: int, loss: float, extra: str = "") -> str:
    rate, eta = self.rates(step)
    text = (f"{self.name} step {step + 1}/{self.total} loss {loss:.4f} "
            f"tok/s {rate:,.0f} eta {format_seconds(eta)}{(' ' + extra) if extra else ''}")
    print(text, file=self.stream, flush=True)
    return text
