"""Pretraining of the base decoder (next event: code + visit attributes) on training patients.

Reads top to bottom: data, model and state, sharding, update step, checkpoints, evaluation, loop.

- Batches are a pure function of (seed, step): epoch permutations of the training patients and a
  random window of `seq_len` tokens per long patient. A resumed run therefore sees exactly the
  batches the uninterrupted run would have seen, and ends with the same parameters.
- `pack=True` puts several patients in each row (first fit, in permutation order), each its own
  segment: positions restart at 0, attention stays within the segment and no target crosses into
  the next patient, so every patient's log-likelihood is exactly its unpacked one. Most patients
  are far shorter than `seq_len`, so an unpacked row is mostly PAD that the model still computes;
  packed rows are nearly full. An epoch then has as many steps as its rows fill whole batches.
- The step is one `jax.jit` over (state, batch) with the state donated; shardings come from the
  mesh in `cfg.mesh` (batch split over "data", state replicated), so data parallelism is a config
  change. Metrics of step n are read after step n + 1 is dispatched, so the device never waits on
  Python; a NaN/Inf loss or gradient norm stops training with a `TrainingError` and leaves the last
  good checkpoint (checkpoints are only written after their step's metrics were checked).
- Loss per batch: mean over real target tokens of -log p(code | history, next attributes) plus
  `aux_weight` times the attribute negative log-likelihood (new visit, place of service, gap).
- The run directory (= the returned `ckpt_dir`) holds vocab.json, model_config.json,
  start_prior.npz (first-visit age/place/sex/birth day of training patients, for unconditional
  generation), latest/ and best/ checkpoints, metrics.jsonl and, when finished, done.json.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rltf_jax import io
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.sequences import PackedBatch, TokenBatch, encode_packed, encode_patients, plan_packing
from rltf_jax.data.vocab import PAD, Vocabulary
from rltf_jax.errors import ConfigError, DataError
from rltf_jax.models import decoder as dec
from rltf_jax.models import masks
from rltf_jax.training import common
from rltf_jax.training.checkpoint import Checkpointer

DONE_FILE = "done.json"
START_PRIOR_FILE = "start_prior.npz"


def default_pretrain_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.steps = 1000
  c.batch_size = 32
  c.seq_len = 128
  c.pack = False            # several patients per row (see the module docstring)
  c.lr = 3e-3
  c.warmup_steps = 100
  c.min_lr_ratio = 0.1
  c.weight_decay = 0.01
  c.b1 = 0.9
  c.b2 = 0.95
  c.clip_norm = 1.0
  c.aux_weight = 1.0        # weight of the visit-attribute loss beside the code loss
  c.eval_every = 200
  c.ckpt_every = 200
  c.log_every = 20
  c.num_valid_patients = 1000
  c.seed = 0
  return c


# ---------------------------------------------------------------------------- data
class Batches:
  """Training batches as a pure function of the step (so a resumed run replays them exactly).

  Unpacked: one patient per row, `TokenBatch`. Packed: `PackedBatch` rows from a packing plan of
  each epoch's permutation; the plan depends only on (seed, epoch), and the steps of each epoch
  are counted from the plans of the epochs before it."""

  def __init__(self, ds: PatientEvents, vocab: Vocabulary, patients: np.ndarray, batch_size: int,
               seq_len: int, seed: int, pack: bool = False):
    if len(patients) == 0:
      raise DataError("no training patients to pretrain on (check the split fractions)")
    self.ds, self.vocab, self.patients = ds, vocab, np.asarray(patients)
    self.batch_size, self.seq_len, self.seed, self.pack = batch_size, seq_len, seed, pack
    self.per_epoch = max(1, len(patients) // batch_size)
    self._epoch, self._perm = -1, None
    # Packing: tokens each patient takes (BOS + events + EOS, at most a window of seq_len), the
    # number of steps of each epoch planned so far, and the plan of the last epoch asked for.
    self._n_tokens = _row_tokens(ds, self.patients, seq_len)
    self._epoch_steps: list[int] = []
    self._plan = (-1, None)

  def _epoch_plan(self, epoch: int):
    """(patients in permutation order, their row, their offset, steps) of a packed epoch."""
    if self._plan[0] != epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.patients))
      order = perm
      while True:
        row, offset, num_rows = plan_packing(self._n_tokens[order], self.seq_len)
        if num_rows >= self.batch_size:
          break
        order = np.concatenate([order, perm])  # too few patients to fill a batch: reuse them
      self._plan = (epoch, (self.patients[order], row, offset, num_rows // self.batch_size))
    return self._plan[1]

  def _locate(self, step: int) -> tuple[int, int]:
    """(epoch, batch within the epoch) of a packed step."""
    first = 0
    for epoch in range(step + 1):  # every epoch has at least one step
      if epoch == len(self._epoch_steps):
        self._epoch_steps.append(self._epoch_plan(epoch)[3])
      if step < first + self._epoch_steps[epoch]:
        return epoch, step - first
      first += self._epoch_steps[epoch]
    raise AssertionError("unreachable")

  def rows(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.per_epoch)
    if epoch != self._epoch:
      perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.patients))
      # Fewer patients than a batch: repeat the permutation (sampling with replacement-like reuse).
      reps = -(-self.batch_size // len(perm))
      self._epoch, self._perm = epoch, np.tile(perm, reps)
    return self.patients[self._perm[i * self.batch_size:(i + 1) * self.batch_size]]

  def __call__(self, step: int) -> TokenBatch | PackedBatch:
    rng = np.random.default_rng([self.seed, 1, step])
    if not self.pack:
      return encode_patients(self.ds, self.vocab, self.rows(step), self.seq_len, window="random", rng=rng)
    epoch, i = self._locate(step)
    patients, row, offset, _ = self._epoch_plan(epoch)
    first = i * self.batch_size
    mine = (row >= first) & (row < first + self.batch_size)
    return encode_packed(self.ds, self.vocab, patients[mine], row[mine] - first, offset[mine],
                         self.batch_size, self.seq_len, window="random", rng=rng)


def _row_tokens(ds: PatientEvents, patients: np.ndarray, seq_len: int) -> np.ndarray:
  """Tokens each patient takes in a row: BOS + events + EOS, at most a window of seq_len."""
  return np.minimum(ds.lengths[patients] + 2, seq_len)


def validation_batches(ds: PatientEvents, vocab: Vocabulary, patients: np.ndarray, batch_size: int,
                       seq_len: int, pack: bool = False) -> list[TokenBatch] | list[PackedBatch]:
  """Fixed validation batches (most recent `seq_len` tokens of each patient); the last batch is
  padded with empty rows, which carry no targets and so no weight. Packed batches give the same
  sums (each patient's log-likelihood does not depend on its row) in fewer steps."""
  out = []
  if pack and len(patients):
    patients = np.asarray(patients)
    row, offset, num_rows = plan_packing(_row_tokens(ds, patients, seq_len), seq_len)
    for first in range(0, num_rows, batch_size):
      mine = (row >= first) & (row < first + batch_size)
      out.append(encode_packed(ds, vocab, patients[mine], row[mine] - first, offset[mine], batch_size,
                               seq_len, window="last"))
    return out
  for i in range(0, len(patients), batch_size):
    b = encode_patients(ds, vocab, patients[i:i + batch_size], seq_len, window="last")
    short = batch_size - b.tokens.shape[0]
    if short:
      b = TokenBatch(*(np.pad(a, ((0, short), (0, 0))) for a in b))
    out.append(b)
  return out


def unigram_entropy(ds: PatientEvents, vocab: Vocabulary, patients: np.ndarray) -> float:
  """Cross-entropy (nats/token) of the next-code targets (codes and EOS) under their own unigram
  distribution: the loss of a model that ignores all context."""
  sub = ds.select(patients)
  counts = np.bincount(vocab.encode(sub), minlength=len(vocab)).astype(np.float64)
  counts[2] += sub.num_patients  # every sequence ends with EOS
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def start_prior(ds: PatientEvents, patients: np.ndarray) -> dict[str, np.ndarray]:
  """First-visit attributes of patients with events: what unconditional generation starts from."""
  idx = np.asarray(patients)[ds.lengths[patients] > 0]
  first = ds.offsets[idx]
  return dict(sex=ds.sex[idx], birth_day=ds.birth_day[idx], age=ds.age[first],
              pos=ds.pos[first].astype(np.int32), day=ds.day[first])


# ---------------------------------------------------------------------------- step
def packed_logprobs(graphdef, params, batch: PackedBatch):
  """`dec.event_logprobs` of packed rows: each segment scored as if it were alone in its row.

  The last token of a segment gets a PAD target (log-prob 0): the next column holds another
  patient's BOS, not its continuation."""
  seg = jnp.asarray(batch.segment)
  tokens = TokenBatch(batch.tokens, batch.visit, batch.age, batch.pos)
  same_next = jnp.concatenate([seg[:, 1:] == seg[:, :-1], jnp.zeros_like(seg[:, :1], bool)], axis=1)
  targets = TokenBatch(*(jnp.where(same_next, a, jnp.zeros_like(a)) for a in dec.next_tokens(tokens)))
  return dec.event_logprobs(graphdef, params, tokens, positions=batch.positions,
                            attention_mask=masks.segments(seg), targets=targets)


def batch_logprobs(graphdef, params, batch: TokenBatch | PackedBatch):
  """(event log-probs dict, number of real targets) of a packed or unpacked batch."""
  if isinstance(batch, PackedBatch):
    lp = packed_logprobs(graphdef, params, batch)
    seg = jnp.asarray(batch.segment)
    n = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)).sum()
  else:
    lp = dec.event_logprobs(graphdef, params, batch)
    n = (dec.next_tokens(batch).tokens != PAD).sum()
  return lp, n.astype(jnp.float32)


def loss_fn(graphdef, params, batch: TokenBatch | PackedBatch, aux_weight: float):
  """(loss, metrics): mean code NLL + aux_weight * mean attribute NLL over real targets."""
  lp, n = batch_logprobs(graphdef, params, batch)
  n = jnp.maximum(n, 1.0)
  code = -lp["code"].sum() / n
  attr = -lp["attributes"].sum() / n
  return code + aux_weight * attr, dict(code_loss=code, attr_loss=attr, tokens=n)


def make_train_step(graphdef, optimizer: optax.GradientTransformation, aux_weight: float):
  """Pure `(state, batch) -> (state, metrics)`; state = dict(params, opt_state, step)."""

  def train_step(state, batch):
    grad_fn = jax.value_and_grad(lambda p: loss_fn(graphdef, p, batch, aux_weight), has_aux=True)
    (loss, aux), grads = grad_fn(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(aux, loss=loss, grad_norm=optax.global_norm(grads),
                   param_norm=optax.global_norm(params), update_norm=optax.global_norm(updates))
    return dict(params=params, opt_state=opt_state, step=state["step"] + 1), metrics

  return train_step


def make_eval_step(graphdef, aux_weight: float):
  """Pure `(params, batch) -> sums` for validation loss and perplexity."""

  def eval_step(params, batch):
    lp, n = batch_logprobs(graphdef, params, batch)
    return dict(code_nll=-lp["code"].sum(), attr_nll=-lp["attributes"].sum(), tokens=n)

  return eval_step


def init_state(model_cfg, vocab_size: int, optimizer, seed: int):
  """A function creating the train state (for `jax.eval_shape` and a sharded `jax.jit`)."""
  def init():
    _, params = dec.init_decoder(model_cfg, vocab_size, seed)
    return dict(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))
  return init


_STEP_CACHE: dict = {}


def build_step(cfg, vocab_size: int, total_steps: int):
  """(graphdef, mesh, jitted step, init fn, state shardings, batch sharding) from config.

  Shared by `pretrain` and the benchmark, so both time the same compiled step. Memoised on the
  config, so a resumed run in the same process (tests, notebooks) does not compile again."""
  key = (json.dumps(cfg.model.to_dict(), sort_keys=True), json.dumps(cfg.pretrain.to_dict(), sort_keys=True),
         json.dumps(cfg.mesh.to_dict() if cfg.get("mesh") else None, sort_keys=True), vocab_size, total_steps,
         tuple(jax.devices()))
  if key not in _STEP_CACHE:
    _STEP_CACHE[key] = _build_step(cfg, vocab_size, total_steps)
  return _STEP_CACHE[key]


def _build_step(cfg, vocab_size: int, total_steps: int):
  mesh = common.make_mesh(cfg.get("mesh"))
  common.check_batch_divisible(cfg.pretrain.batch_size, mesh, "pretrain.batch_size")
  graphdef, _ = dec.abstract_decoder(cfg.model, vocab_size)
  optimizer = common.make_optimizer(cfg.pretrain, total_steps)
  init = init_state(cfg.model, vocab_size, optimizer, cfg.pretrain.seed)
  state_sharding = jax.tree.map(lambda _: common.replicated(mesh), jax.eval_shape(init))
  batch_sharding = common.data_sharding(mesh)
  step = jax.jit(make_train_step(graphdef, optimizer, cfg.pretrain.aux_weight),
                 in_shardings=(state_sharding, batch_sharding),
                 out_shardings=(state_sharding, common.replicated(mesh)), donate_argnums=0)
  return graphdef, mesh, step, init, state_sharding, batch_sharding


_EVAL_CACHE: dict = {}


def _jit_init(init, state_sharding):
  """The state materialised directly in its sharded layout (one compile per `build_step`)."""
  key = ("init", id(init))
  if key not in _EVAL_CACHE:
    _EVAL_CACHE[key] = jax.jit(init, out_shardings=state_sharding)
  return _EVAL_CACHE[key]


def _eval_step(graphdef, aux_weight, params_sharding, batch_sharding):
  key = (graphdef, aux_weight, batch_sharding)
  if key not in _EVAL_CACHE:
    _EVAL_CACHE[key] = jax.jit(make_eval_step(graphdef, aux_weight),
                               in_shardings=(params_sharding, batch_sharding))
  return _EVAL_CACHE[key]


# ---------------------------------------------------------------------------- run directory
def _prepare_dir(workdir: Path, cfg, vocab: Vocabulary, ds: PatientEvents, train_idx) -> None:
  """Writes vocab, model config and start prior; refuses a directory from a different run."""
  model_json = cfg.model.to_dict()
  if (workdir / dec.VOCAB_FILE).exists():
    if Vocabulary.load(workdir / dec.VOCAB_FILE) != vocab:
      raise DataError(f"{workdir}: holds a run with a different vocabulary; remove it or choose another workdir")
    old = json.loads((workdir / dec.MODEL_CONFIG_FILE).read_text())
    if old != json.loads(json.dumps(model_json)):
      raise ConfigError(f"{workdir}: holds a run with model config {old}, not {model_json}; "
                        "remove it or choose another workdir")
    return
  workdir.mkdir(parents=True, exist_ok=True)
  io.atomic_savez(workdir / START_PRIOR_FILE, **start_prior(ds, train_idx))
  io.atomic_write_json(workdir / dec.MODEL_CONFIG_FILE, model_json)
  vocab.save(workdir / dec.VOCAB_FILE)  # last: its presence marks a prepared directory


# ---------------------------------------------------------------------------- loop
def pretrain(cfg, dataset: PatientEvents, vocab: Vocabulary, workdir: str | Path, *,
             stop_after: int | None = None, verbose: bool = True) -> Path:
  """Pretrains the decoder on `dataset`'s training split; returns the run directory.

  Resumes from `workdir/latest` when present and returns at once when `done.json` exists.
  `stop_after` ends this call after that many steps (as an interruption would; tests use it).
  """
  workdir = Path(workdir)
  if (workdir / DONE_FILE).exists():
    if verbose:
      print(f"pretrain: {workdir} is finished ({DONE_FILE}); reusing it", flush=True)
    return workdir
  pc = cfg.pretrain
  train_idx = dataset.split_indices("train")
  valid_idx = dataset.split_indices("valid")[:pc.num_valid_patients]
  _prepare_dir(workdir, cfg, vocab, dataset, train_idx)

  # Model, state and sharding.
  graphdef, mesh, train_step, init, state_sharding, batch_sharding = build_step(cfg, len(vocab), pc.steps)
  ckpt = Checkpointer(workdir)
  restored = ckpt.restore_latest(jax.eval_shape(init))
  if restored is None:
    state = _jit_init(init, state_sharding)()
    start, best = 0, math.inf
  else:
    state, meta = restored
    state = jax.device_put(state, state_sharding)
    start, best = int(meta["step"]), float(meta.get("best_valid_loss", math.inf))
    if verbose:
      print(f"pretrain: resuming from step {start}", flush=True)
  eval_step = _eval_step(graphdef, pc.aux_weight, state_sharding["params"], batch_sharding)
  pack = bool(pc.get("pack", False))
  batches = Batches(dataset, vocab, train_idx, pc.batch_size, pc.seq_len, pc.seed, pack=pack)
  valid = validation_batches(dataset, vocab, valid_idx, pc.batch_size, pc.seq_len, pack=pack)
  writer = common.MetricsWriter(workdir / "metrics.jsonl")
  progress = common.Progress(pc.steps, name="pretrain")

  def evaluate(params) -> dict[str, float]:
    sums = None
    for b in valid:
      got = eval_step(params, jax.device_put(b, batch_sharding))
      sums = got if sums is None else jax.tree.map(jnp.add, sums, got)
    if sums is None:
      return {}
    s = common.to_host(sums)
    n = max(s["tokens"], 1.0)
    code, attr = s["code_nll"] / n, s["attr_nll"] / n
    return dict(valid_loss=code + pc.aux_weight * attr, valid_code_loss=code, valid_attr_loss=attr,
                valid_perplexity=math.exp(min(code, 50.0)))

  note = lambda: (f"The last good checkpoint (step {ckpt.latest_step()}) is kept in {workdir / 'latest'}. "
                  if ckpt.latest_step() is not None else "No checkpoint was written yet. ")

  def record(step: int, metrics) -> dict[str, float]:
    m = common.to_host(metrics)
    common.check_finite(m, step + 1, keys=("loss", "grad_norm", "param_norm"), checkpoint_note=note())
    progress.count(step, m["tokens"])
    if (step + 1) % pc.log_every == 0 or step + 1 == pc.steps:
      rate, eta = progress.rates(step)
      writer.write(dict(m, step=step + 1, tokens_per_s=rate, time=time.time()))
      if verbose:
        progress.line(step, m["loss"])
    return m

  end = pc.steps if stop_after is None else min(pc.steps, start + stop_after)
  pending = None  # (step, device metrics) not yet read back
  for step in range(start, end):
    batch = jax.device_put(batches(step), batch_sharding)
    state, metrics = train_step(state, batch)
    if pending is not None:
      record(*pending)
    pending = (step, metrics)
    last = step + 1 == pc.steps
    do_eval = (step + 1) % pc.eval_every == 0 or last
    do_ckpt = do_eval or (step + 1) % pc.ckpt_every == 0 or step + 1 == end
    if do_ckpt:
      # Read this step's metrics before saving, so that no checkpoint holds a diverged state.
      record(*pending)
      pending = None
      meta = dict(best_valid_loss=best)
      paused = time.perf_counter()
      if do_eval and valid:
        v = evaluate(state["params"])
        writer.write(dict(v, step=step + 1, time=time.time()))
        if verbose:
          print(f"pretrain step {step + 1}: valid loss {v['valid_loss']:.4f} "
                f"(code {v['valid_code_loss']:.4f}, perplexity {v['valid_perplexity']:.1f})", flush=True)
        if v["valid_loss"] < best:
          best = v["valid_loss"]
          ckpt.save_best(step + 1, state["params"], v)
        meta = dict(v, best_valid_loss=best)
      ckpt.save_latest(step + 1, state, meta)
      progress.pause(time.perf_counter() - paused)  # evaluation and saving are not training speed
  if pending is not None:
    record(*pending)
  if end == pc.steps:
    if ckpt.best_meta() is None:  # no validation patients: the final parameters are the best
      ckpt.save_best(pc.steps, state["params"], {})
    io.atomic_write_json(workdir / DONE_FILE, dict(steps=pc.steps, best_valid_loss=best,
                                                   unigram_valid_loss=unigram_entropy(dataset, vocab, valid_idx)
                                                   if len(valid_idx) else None))
  ckpt.close()
  return workdir
