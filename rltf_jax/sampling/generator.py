"""`TransformerGenerator`: the `rltf_jax.generator.Generator` of a decoder (base, RLTF or SFT).

Continuations are converted back to events: the sampler gives each new event a visit index
(continuing the prompt's numbering), a place of service and a day gap, from which the day
(previous event's day + gap) and the age follow. Unconditional patients start from the first-visit
attributes (age, place of service, sex, birth day) of a random training patient, stored by
pretraining as `start_prior.npz`; the model generates everything after BOS.

With several local devices, each batch of rows is split over all of them (`sampler.local_mesh`):
the parameters are copied to every device once, a batch is padded to a multiple of the devices
and the results come back in row order. Generations are the same tokens as on one device (each
row draws the random numbers it draws there), and scores agree to float rounding.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rltf_jax.checkpoints import load_decoder, load_start_prior
from rltf_jax.data.events import DAYS_PER_YEAR, PatientEvents
from rltf_jax.data.sequences import TokenBatch, encode_patients, lengths, pad_to, bucket_length
from rltf_jax.data.vocab import BOS, NUM_SPECIAL, Vocabulary
from rltf_jax.errors import DataError
from rltf_jax.models import decoder as dec
from rltf_jax.sampling import sampler

@functools.partial(jax.jit, static_argnums=0)
def _sequence_logprobs(graphdef, params, batch: TokenBatch):
  """f32 [B]: summed code log-probabilities of each row (jax caches one compile per graphdef)."""
  return dec.code_logprobs(graphdef, params, batch).sum(-1)


class TransformerGenerator:
  """Samples events from decoder parameters; see the module docstring."""

  def __init__(self, graphdef, params, vocab: Vocabulary, *, name: str = "base",
               start_prior: dict[str, np.ndarray] | None = None, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, batch_size: int = 64, max_prompt_len: int = 128,
               buckets=sampler.DEFAULT_BUCKETS, calibration: dict | None = None):
    self.mesh = sampler.local_mesh()
    if self.mesh is not None:  # whole on every device, once, not per batch
      params = jax.device_put(params, NamedSharding(self.mesh, P()))
    self.graphdef, self.params, self.vocab, self.name = graphdef, params, vocab, name
    self.start_prior = start_prior
    self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
    self.batch_size, self.buckets = int(batch_size), tuple(buckets)
    self.max_prompt_len = min(int(max_prompt_len), max(self.buckets))
    # Stratum calibration (`rltf_jax.training.calibration`): {"codes", "new_onset", "repeat"}, the
    # logit bias on the target codes for a prompt without and with one of them.
    self.calibration = calibration

  @classmethod
  def from_checkpoint(cls, ckpt_dir: str | Path, *, which: str = "best", **kwargs) -> "TransformerGenerator":
    """A generator over a decoder run directory (pretrained or fine-tuned; `rltf_jax.checkpoints`)."""
    graphdef, params, vocab, _ = load_decoder(ckpt_dir, which)
    return cls(graphdef, params, vocab, start_prior=load_start_prior(ckpt_dir), **kwargs)

  # ---------------------------------------------------------------- sampling
  def _sample_rows(self, prompt: TokenBatch, max_new: int, seed: int, **target) -> dict[str, np.ndarray]:
    """Samples in fixed-size batches (the last one padded), so shapes repeat and nothing recompiles."""
    n = prompt.tokens.shape[0]
    plen = np.maximum(lengths(prompt), 1)
    width = bucket_length(int(plen.max(initial=1)), self.buckets)
    prompt = pad_to(prompt, width)
    outs = []
    for i, start in enumerate(range(0, n, self.batch_size)):
      rows = slice(start, start + self.batch_size)
      b = TokenBatch(*(a[rows] for a in prompt))
      bl = plen[rows]
      short = self.batch_size - len(bl)
      if short:  # fill with BOS-only rows, whose samples are dropped
        b = TokenBatch(*(np.pad(a, ((0, short), (0, 0))) for a in b))
        b.tokens[-short:, 0] = BOS
        bl = np.concatenate([bl, np.ones(short, np.int32)])
      row_target = dict(target)
      if "target_bias" in target:  # per row: this batch's rows (padding rows get 0)
        row_target["target_bias"] = np.pad(target["target_bias"][rows], (0, short))
      out = sampler.sample(self.graphdef, self.params, b, bl, max_new=max_new,
                           temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                           seed=seed * 1_000_003 + i, buckets=self.buckets, mesh=self.mesh,
                           **row_target)
      outs.append({k: v[:self.batch_size - short] for k, v in out.items()})
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

  def _to_events(self, base: PatientEvents, out, last_day) -> PatientEvents:
    """Generated columns -> a PatientEvents with `base`'s patients and the new events only."""
    k = out["num_new"].astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(k)])
    keep = np.arange(out["tokens"].shape[1])[None, :] < k[:, None]
    # Day: the previous event's day plus the cumulated gaps of the row.
    day = last_day[:, None] + np.cumsum(np.where(keep, out["gap_days"], 0), axis=1)
    tokens = out["tokens"][keep]
    codes = np.asarray(self.vocab.codes, dtype=str)
    return PatientEvents.build(
        subject_id=base.subject_id, sex=base.sex, birth_day=base.birth_day, split=base.split,
        offsets=offsets, code=(tokens - NUM_SPECIAL).astype(np.int32), day=day[keep],
        visit=out["visit"][keep], pos=out["pos"][keep], codes=codes, source=f"{self.name} generator")

  def complete(self, prompts: PatientEvents, *, max_new_events: int, seed: int) -> PatientEvents:
    """Each prompt's continuation (new events only, at most `max_new_events`, stopping at EOS)."""
    n = prompts.num_patients
    if n == 0:
      return self._to_events(prompts, dict(num_new=np.zeros(0, np.int32), tokens=np.zeros((0, 1), np.int32),
                                           gap_days=np.zeros((0, 1), np.int32), visit=np.zeros((0, 1), np.int32),
                                           pos=np.zeros((0, 1), np.int32)), np.zeros(0, np.int64))
    batch, last_day = self._encode_prompts(prompts, seed)
    out = self._sample_rows(batch, max_new_events, seed, **self._calibrated(prompts))
    return self._to_events(prompts, out, last_day)

  def _target_mask(self, codes) -> np.ndarray:
    mask = np.zeros(len(self.vocab), bool)
    mask[[self.vocab.id(c) for c in codes if c in self.vocab]] = True
    return mask

  def _calibrated(self, prompts: PatientEvents, bias: float = 0.0) -> dict:
    """The sampler's target arguments of a calibrated generator (none without calibration)."""
    if self.calibration is None:
      return {} if bias == 0.0 else dict(target_bias=np.full(prompts.num_patients, bias, np.float32))
    held = prompts.patients_with_any(self.calibration["codes"])
    row_bias = np.where(held, self.calibration["repeat"], self.calibration["new_onset"]) + bias
    return dict(target_mask=self._target_mask(self.calibration["codes"]),
                target_bias=row_bias.astype(np.float32))

  def forecast(self, prompts: PatientEvents, target_codes, *, horizon: int, samples: int, seed: int,
               bias: float = 0.0, masked: bool = True) -> dict[str, np.ndarray]:
    """K = `samples` continuations of `horizon` events per prompt, with the target codes tracked.

    Returns `target_mass` f32 [N, K, horizon] (each step's probability of a target code, 0 after
    EOS) and `hits` int [N] (draws whose events hold a target code). With `masked` (default) the
    codes are drawn with the targets masked out, so `hits` is 0 and
    `1 - prod(1 - target_mass, axis=-1)` averaged over K is the model's probability of a target in
    the next `horizon` events (`rltf_jax.sampling.sampler`); unmasked, `hits` / K estimates it.
    `bias` is added to the target codes' scaled logits. Draw k of a prompt is row k of its block
    of K rows, so a run is fixed by `seed`."""
    n, k = prompts.num_patients, int(samples)
    target_mask = self._target_mask(target_codes)
    if n == 0 or not target_mask.any():
      return dict(target_mass=np.zeros((n, k, horizon), np.float32), hits=np.zeros(n, np.int64))
    if self.calibration is not None and set(self.calibration["codes"]) != set(target_codes):
      raise DataError("a calibrated generator forecasts the codes it was calibrated for only")
    row_bias = self._calibrated(prompts, bias).get("target_bias", np.full(n, bias, np.float32))
    batch, _ = self._encode_prompts(prompts, seed)
    batch = TokenBatch(*(np.repeat(a, k, axis=0) for a in batch))
    out = self._sample_rows(batch, horizon, seed, target_mask=target_mask,
                            target_bias=np.repeat(row_bias, k), mask_target=masked)
    live = np.arange(horizon)[None, :] < out["num_new"][:, None]
    hit = (target_mask[out["tokens"]] & live).any(1)
    return dict(target_mass=out["target_mass"].reshape(n, k, horizon),
                hits=hit.reshape(n, k).sum(1).astype(np.int64))

  def _encode_prompts(self, prompts: PatientEvents, seed: int) -> tuple[TokenBatch, np.ndarray]:
    """(right-padded prompt tokens, each prompt's last day); an empty prompt starts like an
    unconditional patient."""
    n = prompts.num_patients
    batch = encode_patients(prompts, self.vocab, np.arange(n), self.max_prompt_len, window="last",
                            add_eos=False)
    lens = prompts.lengths
    empty = lens == 0
    last = np.maximum(prompts.offsets[1:] - 1, 0)
    last_day = np.where(empty, 0, prompts.day[last] if prompts.num_events else 0).astype(np.int64)
    if empty.any():
      # No history: start like an unconditional patient (first-visit age and place from the prior).
      age, pos, _, _ = self._draw_start(int(empty.sum()), seed)
      rows = np.flatnonzero(empty)
      age = np.maximum(age, 0)
      batch.age[rows, 0], batch.pos[rows, 0] = age, pos
      last_day[rows] = prompts.birth_day[rows] + np.round(age * DAYS_PER_YEAR).astype(np.int64)
    return batch, last_day

  def _draw_start(self, n: int, seed: int):
    """(age, pos, sex, birth_day) of `n` random training patients' first visits."""
    rng = np.random.default_rng([seed, 7])
    if self.start_prior is None or len(self.start_prior["age"]) == 0:
      return (np.full(n, 40.0, np.float32), np.full(n, 11, np.int32), rng.integers(0, 2, n).astype(np.int8),
              np.full(n, 3650, np.int32))
    i = rng.integers(0, len(self.start_prior["age"]), n)
    p = self.start_prior
    return (p["age"][i].astype(np.float32), p["pos"][i].astype(np.int32), p["sex"][i].astype(np.int8),
            p["birth_day"][i].astype(np.int32))

  def generate_patients(self, n: int, seed: int, *, max_events: int | None = None) -> PatientEvents:
    """`n` whole synthetic patients (subject ids 1..n, split "test"); write with `write_meds`."""
    age, pos, sex, birth_day = self._draw_start(n, seed)
    first_day = birth_day.astype(np.int64) + np.round(age * DAYS_PER_YEAR).astype(np.int64)
    # The prompt is BOS alone, carrying the first visit's attributes (visit 0, age, place).
    prompt = TokenBatch(np.full((n, 1), BOS, np.int32), np.zeros((n, 1), np.int32),
                        age[:, None].astype(np.float32), pos[:, None].astype(np.int32))
    max_events = max_events or self.max_prompt_len
    out = self._sample_rows(prompt, max_events, seed)
    base = PatientEvents.build(subject_id=np.arange(1, n + 1), sex=sex, birth_day=birth_day,
                               offsets=np.zeros(n + 1, np.int64), code=[], day=[], visit=[], pos=[],
                               codes=np.asarray(self.vocab.codes, dtype=str), split=np.full(n, 2, np.int8))
    return self._to_events(base, out, first_day)

  # ---------------------------------------------------------------- scoring
  def log_likelihood(self, dataset: PatientEvents) -> np.ndarray:
    """float64 [P]: sum of log p(code) over each patient's most recent `max_prompt_len` tokens
    (BOS ... EOS), given the event attributes; codes unknown to the vocabulary score as UNK."""
    return self.scored_log_likelihood(dataset)[0]

  def scored_log_likelihood(self, dataset: PatientEvents) -> tuple[np.ndarray, np.ndarray]:
    """(`log_likelihood`, int64 [P] tokens scored): every token of the window after BOS, i.e.
    min(events + 2, max_prompt_len) - 1."""
    n = dataset.num_patients
    out, scored = np.zeros(n, np.float64), np.zeros(n, np.int64)
    for start in range(0, n, self.batch_size):
      rows = np.arange(start, min(n, start + self.batch_size))
      b = encode_patients(dataset, self.vocab, rows, self.max_prompt_len, window="last")
      scored[rows] = lengths(b) - 1  # position t scores token t + 1; BOS is never a target
      width = bucket_length(int(lengths(b).max(initial=1)), self.buckets)
      b = pad_to(b, width)
      short = self.batch_size - len(rows)
      if short:
        b = TokenBatch(*(np.pad(a, ((0, short), (0, 0))) for a in b))
      params = self.params
      if self.mesh is not None:
        b, params = sampler.shard_rows(self.mesh, b, params)
        b = TokenBatch(*b)
      out[rows] = np.asarray(_sequence_logprobs(self.graphdef, params, b), np.float64)[:len(rows)]
    return out, scored
