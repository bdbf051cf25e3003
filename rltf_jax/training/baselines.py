"""Training loops of the two baselines, the LSTM generator and HALO.

As in the paper both are trained on the evaluation's modelling set only: the caller (the pipeline)
passes that set as `dataset`; nothing here looks at splits. Both share the project's vocabulary.

A checkpoint directory holds `meta.json` (model sizes and a fingerprint of the data and config),
`vocab.json`, `attributes.npz` (the visit statistics the generators use to give generated events a
day and a place of service), HALO's `layout.npz`, `metrics.jsonl`, the shared checkpoint layout
(`rltf_jax.training.checkpoint`: `latest/` after every epoch, to resume; `best/` = the final
parameters, which the generators load) and, once training has finished, `done.json`. A rerun resumes from the last complete
epoch, returns at once when `done.json` exists, and refuses to touch a directory trained on other
data or settings.

Steps are pure functions of (params, optimizer state, batch) under `jax.jit` over `nnx.split`
state, with the state donated. The loop dispatches a step before reading the previous step's loss
back, and stops with `TrainingError` on a NaN or Inf loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rltf_jax import io
from rltf_jax.data import sequences
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import PAD, Vocabulary
from rltf_jax.errors import ConfigError, DataError, TrainingError
from rltf_jax.models.halo import HALO, HALOLayout
from rltf_jax.models.lstm import LSTMLM
from rltf_jax.training import checkpoint, common

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- model construction
def build_lstm(meta: dict, seed: int = 0) -> LSTMLM:
  return LSTMLM(meta["vocab_size"], meta["embed_dim"], meta["hidden_dim"], meta["num_layers"],
                rngs=nnx.Rngs(seed))


def build_halo(meta: dict, seed: int = 0) -> HALO:
  return HALO(meta["total_vocab"], meta["width"], meta["num_layers"], meta["num_heads"],
              meta["max_visits"], rngs=nnx.Rngs(seed))


def restore_params(ckpt_dir: str | Path, model: nnx.Module) -> nnx.Module:
  """Loads the trained parameters (`best/`, written when training finished) into `model`."""
  _, params = nnx.split(model)
  nnx.update(model, checkpoint.restore_params(ckpt_dir, params, checkpoint.BEST))
  return model


# ---------------------------------------------------------------- visit attributes
def visit_attributes(dataset: PatientEvents) -> dict[str, np.ndarray]:
  """What the generators need to date and place generated visits: the training data's inter-visit
  gaps (days), every visit's place of service, ages at the first visit (days) and the mean number
  of events per visit."""
  first = np.ones(dataset.num_events, bool)
  if dataset.num_events > 1:
    first[1:] = (np.diff(dataset.visit) != 0) | (np.diff(dataset.event_patient()) != 0)
  starts = np.flatnonzero(first)
  same_patient = np.diff(dataset.event_patient()[starts]) == 0
  gaps = np.diff(dataset.day[starts])[same_patient]
  gaps = gaps[gaps >= 0]
  first_visit = starts[np.isin(starts, dataset.offsets[:-1])]
  first_age_days = dataset.day[first_visit] - dataset.birth_day[dataset.event_patient()[first_visit]]
  return dict(
      gaps=gaps.astype(np.int32) if len(gaps) else np.array([30], np.int32),
      pos=dataset.pos[starts].astype(np.int16) if len(starts) else np.array([0], np.int16),
      first_age_days=(first_age_days.astype(np.int32) if len(first_visit)
                      else np.array([365 * 40], np.int32)),
      events_per_visit=np.float64(dataset.num_events / max(len(starts), 1)))


# ---------------------------------------------------------------- shared loop
def _fingerprint(dataset: PatientEvents, vocab: Vocabulary, section: dict) -> str:
  h = hashlib.sha256()
  h.update(dataset.fingerprint().encode())
  h.update(vocab.fingerprint.encode())
  # `epochs` is left out so that an interrupted run can be resumed with more epochs.
  h.update(json.dumps({k: v for k, v in section.items() if k != "epochs"}, sort_keys=True,
                      default=str).encode())
  return h.hexdigest()[:16]


def _prepare_dir(ckpt_dir: Path, meta: dict) -> bool:
  """Creates or checks `ckpt_dir`; True when its training already finished."""
  meta_path = ckpt_dir / "meta.json"
  if meta_path.exists():
    old = json.loads(meta_path.read_text())
    if old.get("fingerprint") != meta["fingerprint"]:
      raise ConfigError(
          f"{ckpt_dir} holds a {old.get('model')} trained on other data or settings "
          f"(fingerprint {old.get('fingerprint')} != {meta['fingerprint']}); remove it or choose "
          "another workdir")
  else:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(meta_path, meta)
  done = ckpt_dir / "done.json"
  if not done.exists():
    return False
  epochs = json.loads(done.read_text()).get("epochs")
  if epochs != meta["config"]["epochs"]:
    raise ConfigError(f"{ckpt_dir} finished training with {epochs} epochs, not the configured "
                      f"{meta['config']['epochs']}; remove it or choose another workdir to retrain")
  return True


def _train(ckpt_dir: Path, model: nnx.Module, tx: optax.GradientTransformation,
           loss_fn: Callable, epochs: int, batches: Callable[[int], list], what: str) -> dict:
  """Runs `epochs` epochs of `batches(epoch)` (an iterable of numpy batches), resuming if possible.

  `loss_fn(model, batch) -> (mean loss, weight)`.
  """
  graphdef, params = nnx.split(model)
  opt_state = tx.init(params)
  ckpt = checkpoint.Checkpointer(ckpt_dir)
  start_epoch = 0
  resumed = ckpt.restore_latest(dict(params=params, opt_state=opt_state))
  if resumed is not None:
    state, meta = resumed
    params, opt_state, start_epoch = state["params"], state["opt_state"], int(meta["step"])
    log.info("%s: resuming after epoch %d from %s", what, start_epoch, ckpt_dir)

  def train_step(params, opt_state, batch):
    def f(p):
      return loss_fn(nnx.merge(graphdef, p), batch)
    (loss, weight), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, dict(loss=loss, weight=weight,
                                                                 grad_norm=optax.global_norm(grads))

  step = jax.jit(train_step, donate_argnums=(0, 1))
  metrics_log = common.MetricsWriter(ckpt_dir / "metrics.jsonl")
  history = []
  t_start = time.perf_counter()
  for epoch in range(start_epoch, epochs):
    t0 = time.perf_counter()
    total, weight, pending = 0.0, 0.0, None
    for batch in batches(epoch):
      params, opt_state, metrics = step(params, opt_state, batch)
      if pending is not None:  # read step n-1 while step n runs
        total, weight = _accumulate(pending, total, weight, what, epoch)
      pending = metrics
    if pending is not None:
      total, weight = _accumulate(pending, total, weight, what, epoch)
    row = dict(epoch=epoch + 1, loss=total / max(weight, 1e-9), seconds=time.perf_counter() - t0)
    ckpt.save_latest(epoch + 1, dict(params=params, opt_state=opt_state), row)
    history.append(row)
    metrics_log.write(row)
    log.info("%s epoch %d/%d loss %.4f (%.1fs)", what, epoch + 1, epochs, row["loss"], row["seconds"])
  summary = dict(epochs=epochs, history=history, train_seconds=time.perf_counter() - t_start)
  ckpt.save_best(epochs, params, dict(loss=history[-1]["loss"]) if history else {})
  ckpt.close()
  io.atomic_write_json(ckpt_dir / "done.json", summary)
  return summary


def _accumulate(metrics, total, weight, what, epoch):
  loss, w = float(metrics["loss"]), float(metrics["weight"])
  if not np.isfinite(loss):
    raise TrainingError(f"{what}: loss became {loss} in epoch {epoch + 1}; lower the learning rate "
                        "(the last complete epoch's checkpoint is kept)")
  return total + loss * w, weight + w


def _section(cfg, name: str):
  return getattr(cfg, name) if hasattr(cfg, name) else cfg


def _check_nonempty(dataset: PatientEvents, what: str) -> None:
  if dataset.num_patients == 0 or dataset.num_events == 0:
    raise DataError(f"{what}: the training set (the evaluation's modelling set) has no events")


# ---------------------------------------------------------------- LSTM
def lstm_loss(model: LSTMLM, tokens_BxL: jax.Array):
  """Mean next-token cross-entropy over non-PAD targets, and their count."""
  logits = model(tokens_BxL[:, :-1])
  targets = tokens_BxL[:, 1:]
  mask = (targets != PAD).astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  n = mask.sum()
  return (ce * mask).sum() / jnp.maximum(n, 1.0), n


def _sortish_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int,
                     group: int = 16) -> list[np.ndarray]:
  """`order` cut into batches after sorting each run of `group` batches by length, the batches
  then shuffled: similar lengths share a batch (less padding) and the epoch stays random."""
  batches = []
  for i in range(0, len(order), group * batch_size):
    run = order[i:i + group * batch_size]
    run = run[np.argsort(lengths[run], kind="stable")]
    batches += [run[j:j + batch_size] for j in range(0, len(run), batch_size)]
  perm = np.random.default_rng(int(order[0]) if len(order) else 0).permutation(len(batches))
  return [batches[j] for j in perm]


def _length_buckets(max_len: int) -> list[int]:
  out, b = [], 16
  while b < max_len:
    out.append(b)
    b *= 2
  return out + [max_len]


def train_lstm(cfg, dataset: PatientEvents, vocab: Vocabulary, workdir: str | Path) -> Path:
  """Trains the LSTM generator on `dataset` (the evaluation's modelling set) into `workdir`.

  `cfg` is the project config (its `lstm` section is used) or that section. Returns `workdir`,
  the checkpoint directory `LSTMGenerator.load` reads.
  """
  c = _section(cfg, "lstm")
  ckpt_dir = Path(workdir)
  _check_nonempty(dataset, "train_lstm")
  if c.max_len < 3:
    raise ConfigError(f"lstm.max_len={c.max_len} leaves no room for events (need >= 3)")
  meta = dict(model="lstm", vocab_size=len(vocab), embed_dim=c.embed_dim, hidden_dim=c.hidden_dim,
              num_layers=c.num_layers, config=c.to_dict() if hasattr(c, "to_dict") else dict(c))
  meta["fingerprint"] = _fingerprint(dataset, vocab, meta["config"])
  if _prepare_dir(ckpt_dir, meta):
    log.info("lstm: %s already trained", ckpt_dir)
    return ckpt_dir
  vocab.save(ckpt_dir / "vocab.json")
  io.atomic_savez(ckpt_dir / "attributes.npz", **visit_attributes(dataset))

  buckets = _length_buckets(c.max_len)
  n, bs = dataset.num_patients, c.batch_size

  def batches(epoch):
    rng = np.random.default_rng([c.seed, epoch])
    for idx in _sortish_batches(rng.permutation(n), dataset.lengths, bs):
      tb = sequences.encode_patients(dataset, vocab, idx, c.max_len, window="random", rng=rng)
      width = sequences.bucket_length(int(sequences.lengths(tb).max()), buckets)
      tokens = np.zeros((bs, width), np.int32)  # all-PAD rows fill the last batch, weight 0
      tokens[:len(idx)] = tb.tokens[:, :width]
      yield tokens

  model = build_lstm(meta, c.seed)
  _train(ckpt_dir, model, optax.adam(c.learning_rate), lstm_loss, c.epochs, batches, "lstm")
  return ckpt_dir


# ---------------------------------------------------------------- HALO
def halo_loss(model: HALO, batch):
  """Bernoulli cross-entropy of every bit of every predicted visit, averaged over (visit, bit)."""
  visits, mask = batch
  logits = model(visits)
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), visits[:, 1:])
  n = mask.sum()
  return (bce.sum(-1) * mask).sum() / jnp.maximum(n * visits.shape[-1], 1.0), n


def train_halo(cfg, dataset: PatientEvents, vocab: Vocabulary, cohort,
               workdir: str | Path) -> Path:
  """Trains HALO on `dataset` (the evaluation's modelling set) into `workdir`.

  The label codes are `cohort.codes` (a `rltf_jax.data.cohorts.Cohort`); `cfg` is the project
  config (its `halo` section is used) or that section. Returns `workdir`.
  """
  c = _section(cfg, "halo")
  ckpt_dir = Path(workdir)
  _check_nonempty(dataset, "train_halo")
  if c.label_mode not in ("sample", "prompt"):
    raise ConfigError(f"halo.label_mode must be 'sample' or 'prompt', got {c.label_mode!r}")
  layout = HALOLayout.build(vocab, cohort.codes, c.max_codes, c.max_visits)
  meta = dict(model="halo", total_vocab=layout.total, width=c.width, num_layers=c.num_layers,
              num_heads=c.num_heads, max_visits=c.max_visits, cohort=cohort.name,
              config=c.to_dict() if hasattr(c, "to_dict") else dict(c))
  meta["fingerprint"] = _fingerprint(dataset, vocab, dict(meta["config"], cohort=cohort.name))
  if _prepare_dir(ckpt_dir, meta):
    log.info("halo: %s already trained", ckpt_dir)
    return ckpt_dir
  vocab.save(ckpt_dir / "vocab.json")
  layout.save(ckpt_dir / "layout.npz")
  io.atomic_savez(ckpt_dir / "attributes.npz", **visit_attributes(dataset))
  visits = layout.encode(dataset, vocab, keep="first")
  n, bs = dataset.num_patients, c.batch_size
  log.info("halo: %d patients, %d codes + %d labels, %.1f%% truncated to %d visits", n,
           layout.num_codes, layout.num_labels, 100 * visits.truncated.mean(), c.max_visits - 2)

  def batches(epoch):
    order = np.random.default_rng([c.seed, epoch]).permutation(n)
    for i in range(0, n, bs):
      idx = order[i:i + bs]
      x, mask = layout.dense(visits, np.resize(idx, bs))  # the last batch repeats rows ...
      mask[len(idx):] = 0.0                                # ... at weight 0
      yield x, mask

  model = build_halo(meta, c.seed)
  _train(ckpt_dir, model, optax.adam(c.learning_rate), halo_loss, c.epochs, batches, "halo")
  return ckpt_dir
