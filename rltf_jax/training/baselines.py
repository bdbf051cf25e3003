"""Training of the two baselines, the LSTM generator and HALO: their losses and batches.

As in the paper both are trained on the evaluation's modelling set only: the caller (the pipeline)
passes that set as `dataset`; nothing here looks at splits. Both share the project's vocabulary.

The loop is `rltf_jax.training.loop` (resume, NaN guard, checkpoints, metrics, progress), with a
checkpoint and a metrics line after every epoch; batches are a pure function of the step, so a
resumed run replays the batches of the uninterrupted one. A run directory holds run.json (the
identity: the config section, HALO's cohort, the fingerprints of the data and the vocabulary; an
unfinished run resumes, a finished one is reused, another run's directory is refused), model.json
(what the generators need to rebuild the model), vocab.json, attributes.npz (the visit statistics
the generators use to give generated events a day and a place of service), HALO's layout.npz,
metrics.jsonl, latest/ and best/ (= the final parameters, which the generators load).

The models are small, so they train on one device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rltf_jax import io, runs
from rltf_jax.checkpoints import BASELINE_ATTRIBUTES_FILE, BASELINE_MODEL_FILE, VOCAB_FILE
from rltf_jax.data import sequences
from rltf_jax.data.events import PatientEvents
from rltf_jax.data.vocab import PAD, Vocabulary
from rltf_jax.errors import ConfigError, DataError
from rltf_jax.models.halo import HALO, HALOLayout, build_halo
from rltf_jax.models.lstm import LSTMLM, build_lstm, length_buckets
from rltf_jax.runs import RunDir
from rltf_jax.training import loop
from rltf_jax.training.mesh import single_device_mesh

log = logging.getLogger(__name__)

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


# ---------------------------------------------------------------- shared run
def _run_dir(workdir, model: str, section, dataset: PatientEvents, vocab: Vocabulary, **extra) -> RunDir:
  if dataset.num_patients == 0 or dataset.num_events == 0:
    raise DataError(f"train_{model}: the training set (the evaluation's modelling set) has no events")
  return RunDir(workdir, model, dict(section=section, **extra),
                dict(dataset=dataset.fingerprint(), vocab=vocab.fingerprint))


def _train(run: RunDir, model: nnx.Module, tx: optax.GradientTransformation, loss_fn: Callable,
           epochs: int, per_epoch: int, batch: Callable[[int, int], object], name: str,
           stop_after: int | None) -> None:
  """`epochs` epochs of `per_epoch` steps; `batch(epoch, i)` is the i-th batch of an epoch.

  `loss_fn(model, batch) -> (mean loss, weight)`."""
  graphdef, params = nnx.split(model)

  def loss(p, b):
    value, weight = loss_fn(nnx.merge(graphdef, p), b)
    return value, dict(tokens=weight)

  init = lambda p: loop.initial_state(p, tx)
  step = loop.compile_step((name, graphdef, runs.digest(run.identity["config"])),
                           lambda: loop.make_step(loss, tx), init,
                           jax.eval_shape(init, params), single_device_mesh())
  total = epochs * per_epoch
  result = loop.train(run.path, step, (params,), lambda s: batch(*divmod(s, per_epoch)), name=name,
                      total_steps=total, log_every=per_epoch, ckpt_every=per_epoch,
                      log_fields=lambda s: dict(epoch=s // per_epoch), stop_after=stop_after,
                      verbose=False)
  if result.finished:
    run.finish(epochs=epochs, final=result.metrics)


def _write_files(run: RunDir, meta: dict, vocab: Vocabulary, dataset: PatientEvents,
                 extra: Callable[[Path], object] | None = None) -> None:
  """What the generators read beside the checkpoints; then run.json."""
  run.path.mkdir(parents=True, exist_ok=True)
  io.atomic_write_json(run.path / BASELINE_MODEL_FILE, meta)
  vocab.save(run.path / VOCAB_FILE)
  io.atomic_savez(run.path / BASELINE_ATTRIBUTES_FILE, **visit_attributes(dataset))
  if extra is not None:
    extra(run.path)
  run.start()


def _section(cfg, name: str):
  return getattr(cfg, name) if hasattr(cfg, name) else cfg


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


def train_lstm(cfg, dataset: PatientEvents, vocab: Vocabulary, workdir: str | Path, *,
               stop_after: int | None = None) -> Path:
  """Trains the LSTM generator on `dataset` (the evaluation's modelling set) into `workdir`.

  `cfg` is the project config (its `lstm` section is used) or that section. Returns `workdir`,
  the checkpoint directory `LSTMGenerator.load` reads. `stop_after` ends the call after that many
  steps, as an interruption would (tests).
  """
  c = _section(cfg, "lstm")
  if c.max_len < 3:
    raise ConfigError(f"lstm.max_len={c.max_len} leaves no room for events (need >= 3)")
  run = _run_dir(workdir, "lstm", c, dataset, vocab)
  if run.done:
    log.info("lstm: %s already trained", run.path)
    return run.path
  meta = dict(model="lstm", vocab_size=len(vocab), embed_dim=c.embed_dim, hidden_dim=c.hidden_dim,
              num_layers=c.num_layers, config=runs.plain(c))
  if not run.file.exists():  # the files first: run.json marks a prepared directory
    _write_files(run, meta, vocab, dataset)

  buckets = length_buckets(c.max_len)
  n, bs = dataset.num_patients, c.batch_size
  epoch_batches = {}

  def batch(epoch, i):
    if epoch not in epoch_batches:
      epoch_batches.clear()
      order = np.random.default_rng([c.seed, epoch]).permutation(n)
      epoch_batches[epoch] = _sortish_batches(order, dataset.lengths, bs)
    idx = epoch_batches[epoch][i]
    rng = np.random.default_rng([c.seed, epoch, i])
    tb = sequences.encode_patients(dataset, vocab, idx, c.max_len, window="random", rng=rng)
    width = sequences.bucket_length(int(sequences.lengths(tb).max()), buckets)
    tokens = np.zeros((bs, width), np.int32)  # all-PAD rows fill the last batch, weight 0
    tokens[:len(idx)] = tb.tokens[:, :width]
    return tokens

  _train(run, build_lstm(meta, c.seed), optax.adam(c.learning_rate), lstm_loss, c.epochs,
         -(-n // bs), batch, "lstm", stop_after)
  return run.path


# ---------------------------------------------------------------- HALO
def halo_loss(model: HALO, batch):
  """Bernoulli cross-entropy of every bit of every predicted visit, averaged over (visit, bit)."""
  visits, mask = batch
  logits = model(visits)
  bce = optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), visits[:, 1:])
  n = mask.sum()
  return (bce.sum(-1) * mask).sum() / jnp.maximum(n * visits.shape[-1], 1.0), n


def train_halo(cfg, dataset: PatientEvents, vocab: Vocabulary, cohort, workdir: str | Path, *,
               stop_after: int | None = None) -> Path:
  """Trains HALO on `dataset` (the evaluation's modelling set) into `workdir`.

  The label codes are `cohort.codes` (a `rltf_jax.data.cohorts.Cohort`); `cfg` is the project
  config (its `halo` section is used) or that section. Returns `workdir`.
  """
  c = _section(cfg, "halo")
  if c.label_mode not in ("sample", "prompt"):
    raise ConfigError(f"halo.label_mode must be 'sample' or 'prompt', got {c.label_mode!r}")
  run = _run_dir(workdir, "halo", c, dataset, vocab, cohort=cohort.name)
  if run.done:
    log.info("halo: %s already trained", run.path)
    return run.path
  layout = HALOLayout.build(vocab, cohort.codes, c.max_codes, c.max_visits)
  meta = dict(model="halo", total_vocab=layout.total, width=c.width, num_layers=c.num_layers,
              num_heads=c.num_heads, max_visits=c.max_visits, cohort=cohort.name, config=runs.plain(c))
  if not run.file.exists():  # the files first: run.json marks a prepared directory
    _write_files(run, meta, vocab, dataset, lambda path: layout.save(path / "layout.npz"))
  visits = layout.encode(dataset, vocab, keep="first")
  n, bs = dataset.num_patients, c.batch_size
  log.info("halo: %d patients, %d codes + %d labels, %.1f%% truncated to %d visits", n,
           layout.num_codes, layout.num_labels, 100 * visits.truncated.mean(), c.max_visits - 2)

  def batch(epoch, i):
    idx = np.random.default_rng([c.seed, epoch]).permutation(n)[i * bs:(i + 1) * bs]
    x, mask = layout.dense(visits, np.resize(idx, bs))  # the last batch repeats rows ...
    mask[len(idx):] = 0.0                                # ... at weight 0
    return x, mask

  _train(run, build_halo(meta, c.seed), optax.adam(c.learning_rate), halo_loss, c.epochs,
         -(-n // bs), batch, "halo", stop_after)
  return run.path
