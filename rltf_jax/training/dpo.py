"""DPO-Positive fine-tuning of the base decoder on one cohort's preference pairs.

Loss (method.md), with d_C = log pi(C|P) - log ref(C|P), d_R = log pi(R|P) - log ref(R|P) and the
positive penalty q = max(0, log ref(C|P) - log pi(C|P)):

  placement "outside" (the paper's text):  -log sigmoid(beta * (d_C - d_R)) + lambda * q
  placement "inside"  (Smaug's form):      -log sigmoid(beta * (d_C - d_R - lambda * q))

lambda = 0 is plain sigmoid DPO in both. Log-probabilities are sums of code log-probabilities
(`Decoder.code_logits`, conditioned on each event's visit/place/gap attributes as in pretraining)
over the continuation tokens only, EOS included when the continuation reaches the record's end;
the attribute heads are not scored. The reference log-probabilities are computed once per pair
set and cached (`rltf_jax.training.reference`); the reference model never runs during training.

Speed: a pair is one packed row (layout in `rltf_jax.training.pairs`): the prompt and the shared
part of the continuations run once, and code logits ([.., V], the largest activation) are computed
only at the scored positions, gathered from the hidden states.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rltf_jax import io
from rltf_jax.data.sequences import TokenBatch
from rltf_jax.errors import ConfigError
from rltf_jax.training import common
from rltf_jax.training.checkpoint import Checkpointer
from rltf_jax.training.pairs import SEG_PAD, bucketed_batch, pack_pairs, pair_logps, row_shapes
from rltf_jax.training.preference import PreferenceData

PLACEMENTS = ("outside", "inside")


# ---------------------------------------------------------------------------- loss
def dpo_positive_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
                      lam: float, placement: str = "outside"):
  """(mean loss, metrics) of DPO-Positive over f32 [B] sequence log-probabilities.

  The reference values are constants: no gradient reaches them.
  """
  if placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {placement!r}")
  ref_chosen = jax.lax.stop_gradient(ref_chosen)
  ref_rejected = jax.lax.stop_gradient(ref_rejected)
  chosen_delta = policy_chosen - ref_chosen
  rejected_delta = policy_rejected - ref_rejected
  penalty = jnp.maximum(0.0, ref_chosen - policy_chosen)
  if placement == "outside":
    losses = -jax.nn.log_sigmoid(beta * (chosen_delta - rejected_delta)) + lam * penalty
  else:
    losses = -jax.nn.log_sigmoid(beta * (chosen_delta - rejected_delta - lam * penalty))
  metrics = dict(
      loss=losses.mean(),
      reward_margin=(beta * (chosen_delta - rejected_delta)).mean(),
      reward_accuracy=(chosen_delta > rejected_delta).mean(),
      reward_chosen=(beta * chosen_delta).mean(),
      reward_rejected=(beta * rejected_delta).mean(),
      logp_chosen=policy_chosen.mean(),
      logp_rejected=policy_rejected.mean(),
      penalty=penalty.mean())
  return losses.mean(), metrics


# ---------------------------------------------------------------------------- train step
def make_train_step(graphdef, optimizer, *, beta: float, lam: float, placement: str):
  """Pure `(state, packed, ref_chosen, ref_rejected) -> (state, metrics)`; state = dict(params,
  opt_state, step). `beta` and `lam` are constants of the closure."""
  if placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {placement!r}")

  def loss_fn(params, packed, ref_chosen, ref_rejected):
    chosen, rejected = pair_logps(graphdef, params, packed)
    return dpo_positive_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, lam=lam,
                             placement=placement)

  def train_step(state, packed, ref_chosen, ref_rejected):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], packed, ref_chosen, ref_rejected)
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics.update(grad_norm=optax.global_norm(grads), update_norm=optax.global_norm(updates),
                   tokens=(packed.segment != SEG_PAD).sum())
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1), metrics

  return train_step


def jit_step(train_step, mesh, state_abstract):
  """`(state, args) -> train_step(state, *args)` under `jax.jit`: state replicated and donated,
  every batch argument split over "data" on its leading axis."""
  state_sharding = jax.tree.map(lambda _: common.replicated(mesh), state_abstract)
  step = jax.jit(lambda state, args: train_step(state, *args),
                 in_shardings=(state_sharding, common.data_sharding(mesh)),
                 out_shardings=(state_sharding, common.replicated(mesh)), donate_argnums=0)
  return step, state_sharding


# ---------------------------------------------------------------------------- fine-tune loop
DONE_FILE = "done.json"
RUN_FILE = "finetune.json"
CONFIG_FILE = "config.json"


def batch_rows(step: int, num_rows: int, batch_size: int, seed: int) -> np.ndarray:
  """Rows of step `step`: epoch permutations, a pure function of (seed, step) so that a resumed run
  replays the same batches. The last batch of an epoch is filled from the epoch's start."""
  per_epoch = -(-num_rows // batch_size)
  epoch, i = divmod(step, per_epoch)
  perm = np.random.default_rng([seed, epoch]).permutation(num_rows)
  return np.resize(perm, per_epoch * batch_size)[i * batch_size:(i + 1) * batch_size]


def prepare_run(workdir: Path, cfg, method: str, section, base_ckpt_dir: Path, pairs,
                base_id: str) -> None:
  """Writes the run's identity, config and the files `load_decoder` needs (copied from the base
  run); refuses a directory holding another run."""
  from rltf_jax.models import decoder as dec
  identity = dict(method=method, base_params=base_id, pairs=pairs.fingerprint,
                  config=json.loads(json.dumps(section.to_dict())))
  if (workdir / RUN_FILE).exists():
    old = json.loads((workdir / RUN_FILE).read_text())
    if {k: old.get(k) for k in identity} != identity:
      raise ConfigError(
          f"{workdir} holds a {old.get('method')} fine-tune of other parameters, pairs or settings "
          f"({ {k: old.get(k) for k in identity} } vs {identity}); delete it or choose another directory")
    return
  workdir.mkdir(parents=True, exist_ok=True)
  for name in (dec.MODEL_CONFIG_FILE, dec.VOCAB_FILE, "start_prior.npz"):
    if (base_ckpt_dir / name).exists():
      io.atomic_write_bytes(workdir / name, (base_ckpt_dir / name).read_bytes())
  io.atomic_write_json(workdir / CONFIG_FILE, json.loads(json.dumps(cfg.to_dict(), default=str)))
  # Written last: its presence marks a prepared directory.
  io.atomic_write_json(workdir / RUN_FILE, dict(identity, base_ckpt_dir=str(base_ckpt_dir.resolve())))


_STEP_CACHE: dict = {}


def run_loop(*, name: str, workdir: Path, section, init_params, optimizer, make_step, step_key,
             mesh, make_batch, total_steps: int, stop_after: int | None, verbose: bool) -> bool:
  """The loop shared by DPO and SFT: resume, dispatch step n before reading step n - 1's metrics,
  NaN guard, metrics.jsonl, progress line, checkpoints; returns True when training finished.

  `make_step()` builds the pure step; the jitted step is memoised on `step_key` (everything the
  step depends on), so a resumed run in the same process does not compile again.
  `make_batch(step)` gives the step's arguments after the state (numpy or device arrays).
  """
  state_abstract = jax.eval_shape(lambda p: dict(params=p, opt_state=optimizer.init(p),
                                                 step=jnp.zeros((), jnp.int32)), init_params)
  key = (step_key, tuple(mesh.devices.flat))
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = jit_step(make_step(), mesh, state_abstract)
  step, state_sharding = _STEP_CACHE[key]
  ckpt = Checkpointer(workdir)
  restored = ckpt.restore_latest(state_abstract)
  if restored is None:
    params = jax.device_put(init_params, state_sharding["params"])
    state = dict(params=params, opt_state=jax.jit(optimizer.init)(params),
                 step=jnp.zeros((), jnp.int32))
    start = 0
  else:
    state, meta = restored
    state = jax.device_put(state, state_sharding)
    start = int(meta["step"])
    if verbose:
      print(f"{name}: resuming {workdir} from step {start}", flush=True)
  writer = common.MetricsWriter(workdir / "metrics.jsonl")
  progress = common.Progress(total_steps, name=name)
  batch_sharding = common.data_sharding(mesh)
  note = lambda: (f"The last good checkpoint (step {ckpt.latest_step()}) is kept in {workdir / 'latest'}. "
                  if ckpt.latest_step() is not None else "No checkpoint was written yet. ")
  last_metrics: dict = {}

  def record(i: int, metrics) -> None:
    m = common.to_host(metrics)
    common.check_finite(m, i + 1, checkpoint_note=note())
    progress.count(i, m["tokens"])
    last_metrics.update(m)
    if (i + 1) % section.log_every == 0 or i + 1 == total_steps:
      rate, _ = progress.rates(i)
      writer.write(dict(m, step=i + 1, tokens_per_s=rate, time=time.time()))
      if verbose:
        extra = " ".join(f"{k} {m[k]:.3f}" for k in ("reward_margin", "reward_accuracy", "penalty") if k in m)
        progress.line(i, m["loss"], extra)

  end = total_steps if stop_after is None else min(total_steps, start + stop_after)
  pending = None
  for i in range(start, end):
    args = jax.device_put(tuple(make_batch(i)), batch_sharding)
    state, metrics = step(state, args)
    if pending is not None:
      record(*pending)
    pending = (i, metrics)
    if (i + 1) % section.ckpt_every == 0 or i + 1 == end:
      record(*pending)  # a checkpoint never holds a state whose step diverged
      pending = None
      paused = time.perf_counter()
      ckpt.save_latest(i + 1, state, dict(last_metrics))
      progress.pause(time.perf_counter() - paused)
  if pending is not None:
    record(*pending)
  finished = end == total_steps
  if finished:
    # The fine-tuned model is the final one (there is no validation criterion): `best/` holds it,
    # so `load_decoder` and the sampler read fine-tuned and base checkpoints alike.
    ckpt.save_best(total_steps, state["params"], dict(last_metrics))
    io.atomic_write_json(workdir / DONE_FILE, dict(steps=total_steps, final=last_metrics))
  ckpt.close()
  return finished


def finetune_dpo(cfg, base_ckpt_dir, pref_data: PreferenceData, workdir, *,
                 stop_after: int | None = None, verbose: bool = True) -> Path:
  """DPO-Positive fine-tune of the base decoder in `base_ckpt_dir` on `pref_data`; returns the run
  directory (a checkpoint `load_decoder` reads). Resumes an interrupted run and returns at once
  when the run is finished. `stop_after` ends this call after that many steps (tests)."""
  from rltf_jax.models.decoder import DEFAULT_COMPUTE_DTYPE, load_decoder
  from rltf_jax.training import reference
  rc, workdir, base_ckpt_dir = cfg.rltf, Path(workdir), Path(base_ckpt_dir)
  if rc.penalty_placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {rc.penalty_placement!r}")
  graphdef, base_params, vocab, model_cfg = load_decoder(base_ckpt_dir)
  base_id = reference.params_fingerprint(base_params)
  prepare_run(workdir, cfg, "rltf", rc, base_ckpt_dir, pref_data, base_id)
  # The cached reference values depend on the arithmetic as well as the parameters.
  reference_id = f"{base_id}:{model_cfg.get('compute_dtype', DEFAULT_COMPUTE_DTYPE)}"
  if (workdir / DONE_FILE).exists():
    if verbose:
      print(f"rltf: {workdir} is finished ({DONE_FILE}); reusing it", flush=True)
    return workdir
  packed = pack_pairs(pref_data, vocab)
  cache_dir = pref_data.directory or workdir
  ref_chosen, ref_rejected = reference.reference_logps(
      graphdef, base_params, pref_data, packed, cache_dir, batch_size=rc.reference_batch_size,
      reference_id=reference_id)
  mesh = common.make_mesh(cfg.get("mesh"))
  common.check_batch_divisible(rc.batch_size, mesh, "rltf.batch_size")
  total = rc.epochs * -(-pref_data.num_pairs // rc.batch_size)
  optimizer = common.make_optimizer(rc, total)
  make_step = lambda: make_train_step(graphdef, optimizer, beta=float(rc.beta),
                                      lam=float(rc.positive_lambda), placement=rc.penalty_placement)
  step_key = ("rltf", graphdef, json.dumps(rc.to_dict(), sort_keys=True), total)
  shapes = row_shapes(packed)

  def make_batch(i):
    rows = batch_rows(i, pref_data.num_pairs, rc.batch_size, rc.seed)
    return bucketed_batch(packed, rows, shapes), ref_chosen[rows], ref_rejected[rows]

  if verbose:
    print(f"rltf: {pref_data.num_pairs} pairs, {total} steps of {rc.batch_size} "
          f"(beta {rc.beta}, lambda {rc.positive_lambda} {rc.penalty_placement}) -> {workdir}", flush=True)
  run_loop(name="rltf", workdir=workdir, section=rc, init_params=base_params, optimizer=optimizer,
           make_step=make_step, step_key=step_key, mesh=mesh, make_batch=make_batch, total_steps=total,
           stop_after=stop_after, verbose=verbose)
  return workdir
