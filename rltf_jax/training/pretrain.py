"""Pretraining of the base decoder (next event: code + visit attributes) on training patients.

Reads top to bottom: data, loss, step, the run. The loop itself (resume, metrics, NaN guard,
checkpoints, progress) is `rltf_jax.training.loop`, shared with every other trainer.

- Batches are a pure function of (seed, step): epoch permutations of the training patients and a
  random window of `seq_len` tokens per long patient. A resumed run therefore sees exactly the
  batches the uninterrupted run would have seen, and ends with the same parameters.
- `pack=True` puts several patients in each row (first fit, in permutation order), each its own
  segment: positions restart at 0, attention stays within the segment and no target crosses into
  the next patient, so every patient's log-likelihood is exactly its unpacked one. Most patients
  are far shorter than `seq_len`, so an unpacked row is mostly PAD that the model still computes;
  packed rows are nearly full. An epoch then has as many steps as its rows fill whole batches.
- The step is one `jax.jit` over (state, batch) with the state donated; shardings come from the
  mesh in `cfg.mesh` (batch split over "data" and "fsdp", state over "fsdp"; `training.mesh`), so
  data parallelism and FSDP are config changes.
- Loss per batch: mean over real target tokens of -log p(code | history, next attributes) plus
  `aux_weight` times the attribute negative log-likelihood (new visit, place of service, gap).
- The run directory (= the returned `ckpt_dir`) holds run.json (its identity, marked finished at
  the end), vocab.json, model_config.json, start_prior.npz (first-visit age/place/sex/birth day of
  training patients, for unconditional generation), latest/ and best/ checkpoints and
  metrics.jsonl.
"""

from __future__ import annotations

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rltf_jax import runs
from rltf_jax.checkpoints import save_decoder_files
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.sequences import (PackedBatch, TokenBatch, encode_packed, encode_patients, plan_packing,
                                     window_starts)
from rltf_jax.data.vocab import PAD, Vocabulary
from rltf_jax.errors import DataError
from rltf_jax.models import decoder as dec
from rltf_jax.models import masks
from rltf_jax.runs import RunDir
from rltf_jax.training import loop
from rltf_jax.training.mesh import check_batch_divisible, global_batch, make_mesh, process_rows, sync
from rltf_jax.training.optimizer import make_optimizer


# ---------------------------------------------------------------------------- data
class Batches:
  """Training batches as a pure function of the step (so a resumed run replays them exactly).

  Unpacked: one patient per row, `TokenBatch`. Packed: `PackedBatch` rows from a packing plan of
  each epoch's permutation; the plan depends only on (seed, epoch), and the steps of each epoch
  are counted from the plans of the epochs before it."""

  def __init__(self, ds: PatientEvents, vocab: Vocabulary, patients: np.ndarray, batch_size: int,
               seq_len: int, seed: int, pack: bool = False, share: tuple[int, int] | None = None):
    if len(patients) == 0:
      raise DataError("no training patients to pretrain on (check the split fractions)")
    self.ds, self.vocab, self.patients = ds, vocab, np.asarray(patients)
    self.batch_size, self.seq_len, self.seed, self.pack = batch_size, seq_len, seed, pack
    # Rows [lo, hi) of every batch: a process of a multi-process job encodes only its own
    # (`mesh.process_rows`); the windows are drawn for the whole batch, so the rows are the same.
    self.share = share or (0, batch_size)
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
    lo, hi = self.share
    if not self.pack:
      patients = self.rows(step)
      starts = window_starts(self.ds, patients, self.seq_len, rng)
      return encode_patients(self.ds, self.vocab, patients[lo:hi], self.seq_len, window="random",
                             starts=starts[lo:hi])
    epoch, i = self._locate(step)
    patients, row, offset, _ = self._epoch_plan(epoch)
    first = i * self.batch_size
    mine = (row >= first) & (row < first + self.batch_size)
    patients, row, offset = patients[mine], row[mine] - first, offset[mine]
    starts = window_starts(self.ds, patients, self.seq_len, rng)
    own = (row >= lo) & (row < hi)
    return encode_packed(self.ds, self.vocab, patients[own], row[own] - lo, offset[own], hi - lo,
                         self.seq_len, window="random", starts=starts[own])


def _row_tokens(ds: PatientEvents, patients: np.ndarray, seq_len: int) -> np.ndarray:
  """Tokens each patient takes in a row: BOS + events + EOS, at most a window of seq_len."""
  return np.minimum(ds.lengths[patients] + 2, seq_len)


def validation_batches(ds: PatientEvents, vocab: Vocabulary, patients: np.ndarray, batch_size: int,
                       seq_len: int, pack: bool = False,
                       share: tuple[int, int] | None = None) -> list[TokenBatch] | list[PackedBatch]:
  """Fixed validation batches (most recent `seq_len` tokens of each patient); the last batch is
  padded with empty rows, which carry no targets and so no weight. Packed batches give the same
  sums (each patient's log-likelihood does not depend on its row) in fewer steps. `share`: only
  rows [lo, hi) of each batch, as `Batches`."""
  lo, hi = share or (0, batch_size)
  out = []
  if pack and len(patients):
    patients = np.asarray(patients)
    row, offset, num_rows = plan_packing(_row_tokens(ds, patients, seq_len), seq_len)
    for first in range(0, num_rows, batch_size):
      mine = (row >= first + lo) & (row < first + hi)
      out.append(encode_packed(ds, vocab, patients[mine], row[mine] - first - lo, offset[mine],
                               hi - lo, seq_len, window="last"))
    return out
  for i in range(0, len(patients), batch_size):
    b = encode_patients(ds, vocab, patients[i + lo:i + hi], seq_len, window="last")
    short = hi - lo - b.tokens.shape[0]
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


def make_eval_step(graphdef, aux_weight: float):
  """Pure `(params, batch) -> sums` for validation loss and perplexity."""

  def eval_step(params, batch):
    lp, n = batch_logprobs(graphdef, params, batch)
    return dict(code_nll=-lp["code"].sum(), attr_nll=-lp["attributes"].sum(), tokens=n)

  return eval_step


def build_step(cfg, vocab_size: int, total_steps: int):
  """(graphdef, mesh, jitted step, jitted init, state shardings, batch sharding) from config.

  Shared by `pretrain` and the benchmark, so both time the same compiled step."""
  graphdef, mesh, step = _compiled_step(cfg, vocab_size, total_steps)
  return graphdef, mesh, step.step, step.init, step.state_sharding, step.batch_sharding


def _compiled_step(cfg, vocab_size: int, total_steps: int):
  mesh = make_mesh(cfg.mesh)
  check_batch_divisible(cfg.pretrain.batch_size, mesh, "pretrain.batch_size")
  graphdef, _ = dec.abstract_decoder(cfg.model, vocab_size)
  optimizer = make_optimizer(cfg.pretrain, total_steps)
  aux_weight = float(cfg.pretrain.aux_weight)

  def init():
    _, params = dec.init_decoder(cfg.model, vocab_size, cfg.pretrain.seed)
    return loop.initial_state(params, optimizer)

  key = ("pretrain", runs.digest(cfg.model, cfg.pretrain), vocab_size, total_steps)
  step = loop.compile_step(
      key, lambda: loop.make_step(lambda p, b: loss_fn(graphdef, p, b, aux_weight), optimizer),
      init, jax.eval_shape(init), mesh)
  return graphdef, mesh, step


# ---------------------------------------------------------------------------- the run
def pretrain(cfg, dataset: PatientEvents, vocab: Vocabulary, workdir: str | Path, *,
             stop_after: int | None = None, verbose: bool = True) -> Path:
  """Pretrains the decoder on `dataset`'s training split; returns the run directory.

  The run's identity (`rltf_jax.runs`) is the model and pretraining config and the fingerprints of
  the dataset and the vocabulary: a finished run with the same identity is reused, an unfinished
  one resumes from `workdir/latest`, one with another identity is refused. `stop_after` ends this
  call after that many steps (as an interruption would; tests use it).
  """
  pc = cfg.pretrain
  train_idx = dataset.split_indices("train")
  valid_idx = dataset.split_indices("valid")[:pc.num_valid_patients]
  # Identified by the patients it reads, not the whole dataset: the enriched sample (splits
  # pairs/eval) can change without touching the base model, so sweeps over it share one.
  read = dataset.subset_fingerprint(np.concatenate([train_idx, valid_idx]))
  run = RunDir(workdir, "pretrain", dict(model=cfg.model, pretrain=pc),
               dict(dataset=read, vocab=vocab.fingerprint))
  # Of several processes, each decides on what it read before process 0 (which alone writes) has
  # written anything: the barrier after the reads keeps the decisions the same.
  done, prepared = run.done, run.file.exists()
  sync("pretrain: run directory read")
  if done:
    if verbose:
      print(f"pretrain: {run.path} is finished; reusing it", flush=True)
    return run.path
  if not prepared:  # the files first: run.json marks a prepared directory
    run.path.mkdir(parents=True, exist_ok=True)
    save_decoder_files(run.path, cfg.model, vocab, start_prior(dataset, train_idx))
    run.start()

  graphdef, _, step = _compiled_step(cfg, len(vocab), pc.steps)
  state_sharding, batch_sharding = step.state_sharding, step.batch_sharding
  eval_step = loop.compiled(("pretrain-eval", graphdef, pc.aux_weight, batch_sharding),
                            lambda: jax.jit(make_eval_step(graphdef, pc.aux_weight),
                                            in_shardings=(state_sharding["params"], batch_sharding)))
  share = process_rows(batch_sharding, pc.batch_size)  # every row, unless there are several processes
  batches = Batches(dataset, vocab, train_idx, pc.batch_size, pc.seq_len, pc.seed, pack=pc.pack,
                    share=share)
  valid = validation_batches(dataset, vocab, valid_idx, pc.batch_size, pc.seq_len, pack=pc.pack,
                             share=share)

  def evaluate(params) -> dict[str, float]:
    sums = None
    for b in valid:
      got = eval_step(params, global_batch(b, batch_sharding))
      sums = got if sums is None else jax.tree.map(jnp.add, sums, got)
    if sums is None:
      return {}
    s = loop.to_host(sums)
    n = max(s["tokens"], 1.0)
    code, attr = s["code_nll"] / n, s["attr_nll"] / n
    return dict(valid_loss=code + pc.aux_weight * attr, valid_code_loss=code, valid_attr_loss=attr,
                valid_perplexity=math.exp(min(code, 50.0)))

  result = loop.train(run.path, step, (), batches, name="pretrain", total_steps=pc.steps,
                      log_every=pc.log_every, ckpt_every=pc.ckpt_every, eval_every=pc.eval_every,
                      evaluate=evaluate, stop_after=stop_after, verbose=verbose)
  if result.finished:
    run.finish(steps=pc.steps, best_valid_loss=result.best,
               unigram_valid_loss=unigram_entropy(dataset, vocab, valid_idx) if len(valid_idx) else None)
  sync("pretrain: finished")  # run.json written before any process reads it
  return run.path
