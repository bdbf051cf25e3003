"""Differentially private fine-tuning (DP-SGD) of the base decoder on one cohort's pairs.

What is protected: the patients of the preference pairs. Each patient gives exactly one pair (the
pairs are drawn without replacement, `rltf.pairs_per_patient` = 1; `check_one_row_per_patient`), so a guarantee per pair is one
per patient. The base model and the reference log-probabilities are fixed before the fine-tune
and are public to it; when they were trained on the same patients (pairs drawn from the training
split, as without an enriched sample) the guarantee covers the fine-tune's use of them only, and
`covers` says so.

The mechanism (Abadi et al. 2016), step by step:
  - sampling: each pair joins a step's batch independently with probability q = batch_size / N
    (Poisson sampling, which the accountant assumes; fixed-size shuffled batches would not match
    it). Batches have a static number of rows, `max_rows`: unused rows are masked out, and a draw
    with more pairs than that keeps `max_rows` of them at random (its probability over the whole
    run, `overflow_probability`, is below 1e-9 by the choice of `max_rows`; `truncated_steps`
    counts them);
  - per-pair gradients (`jax.vmap` in `loop.make_private_step`), each clipped to L2 norm
    `clip_norm`, summed, plus Gaussian noise N(0, (sigma * clip_norm)^2) per coordinate, divided
    by the expected batch size q * N; the optimiser (AdamW, its own global clipping) then
    post-processes that gradient, which costs no privacy;
  - accounting: sigma is the smallest noise multiplier whose Renyi-DP bound (`dp_accounting`'s
    `RdpAccountant`, Poisson-subsampled Gaussian, composed over the run's steps) is at most the
    target epsilon at `delta`; the spent epsilon is the same bound over the steps that ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

import numpy as np
from scipy import stats

from rltf_jax.errors import ConfigError

OVERFLOW_BOUND = 1e-9  # the run's probability of a Poisson batch larger than `max_rows`


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """The DP-SGD settings of one fine-tune, fixed before its first step."""
  target_epsilon: float
  delta: float
  clip_norm: float
  noise_multiplier: float
  sampling_rate: float     # q: the probability that a pair joins a step's batch
  expected_batch: float    # q * N, the divisor of the noisy gradient sum
  max_rows: int            # static rows of a batch
  steps: int
  num_pairs: int
  seed: int
  overflow_probability: float  # of any step's draw exceeding max_rows, over the run

  def spent_epsilon(self, steps: int | None = None) -> float:
    return rdp_epsilon(self.noise_multiplier, self.sampling_rate, self.steps if steps is None else steps,
                       self.delta)

  def describe(self, steps_run: int, truncated_steps: int, covers: str) -> dict:
    """What `dp.json`, the evaluation's `metrics.json` and the data card carry."""
    return dict(enabled=True, target_epsilon=self.target_epsilon, delta=self.delta,
                spent_epsilon=self.spent_epsilon(steps_run), clip_norm=self.clip_norm,
                noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate,
                expected_batch=self.expected_batch, max_rows=self.max_rows, steps=steps_run,
                planned_steps=self.steps, pairs=self.num_pairs,
                overflow_probability=self.overflow_probability, truncated_steps=truncated_steps,
                accountant="dp_accounting RdpAccountant, Poisson-subsampled Gaussian",
                unit="one patient (one preference pair per patient)", covers=covers)


def enabled(section) -> bool:
  """Whether `section` (cfg.rltf or cfg.sft) asks for DP training (dp.epsilon > 0)."""
  dp = section.get("dp")
  return dp is not None and float(dp.epsilon) > 0


def identity(plain: dict) -> dict:
  """A plain config section (`runs.plain`) as a fine-tune's identity: without `dp` when DP is off,
  so that runs made before DP existed keep their identity (and a non-DP run is unchanged by it)."""
  if not float((plain.get("dp") or {}).get("epsilon", 0)) > 0:
    plain = {k: v for k, v in plain.items() if k != "dp"}
  return plain


@contextlib.contextmanager
def _quiet_accountant():
  """dp_accounting logs a warning for every Renyi order whose series it drops (a looser but still
  valid bound); hundreds of them per calibration would bury the run's log."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def rdp_epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> float:
  """epsilon at `delta` of `steps` Poisson-subsampled Gaussian steps (Renyi DP accountant)."""
  from dp_accounting import rdp
  if steps <= 0:
    return 0.0
  with _quiet_accountant():
    accountant = rdp.RdpAccountant()
    accountant.compose(_event(noise_multiplier, sampling_rate), steps)
    return float(accountant.get_epsilon(delta))


def _event(noise_multiplier: float, sampling_rate: float):
  from dp_accounting import dp_event
  return dp_event.PoissonSampledDpEvent(sampling_rate, dp_event.GaussianDpEvent(noise_multiplier))


def calibrate_noise(target_epsilon: float, sampling_rate: float, steps: int, delta: float) -> float:
  """The smallest noise multiplier (to 0.1%) with `rdp_epsilon` at most `target_epsilon`."""
  import dp_accounting
  from dp_accounting import dp_event, rdp
  make = lambda sigma: dp_event.SelfComposedDpEvent(_event(sigma, sampling_rate), steps)
  with _quiet_accountant():
    sigma = float(dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant, make, float(target_epsilon), float(delta),
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-3))
  # The search returns a value within `tol` of the boundary on the safe side; check it.
  if rdp_epsilon(sigma, sampling_rate, steps, delta) > target_epsilon * (1 + 1e-9):
    raise ConfigError(f"DP calibration failed: noise {sigma} exceeds epsilon {target_epsilon}")
  return sigma


def max_rows_for(expected_batch: float, num_pairs: int, steps: int, multiple: int) -> tuple[int, float]:
  """(static batch rows, probability that any of `steps` Binomial(N, q) draws exceeds them): the
  smallest multiple of `multiple` whose run-wide overflow probability is below OVERFLOW_BOUND."""
  q = expected_batch / num_pairs
  rows = max(multiple, multiple * math.ceil(expected_batch / multiple))
  while True:
    p_step = float(stats.binom.sf(rows, num_pairs, q))
    p_run = -math.expm1(steps * math.log1p(-p_step)) if p_step < 1 else 1.0
    if p_run < OVERFLOW_BOUND or rows >= num_pairs:
      return min(rows, multiple * math.ceil(num_pairs / multiple)), p_run if rows < num_pairs else 0.0
    rows += multiple


def plan(section, num_pairs: int, steps: int, multiple: int = 1) -> PrivacyPlan:
  """The plan of a fine-tune of `steps` expected-size-`section.batch_size` steps over `num_pairs`
  pairs, from `section.dp` (epsilon, delta, clip_norm, seed); `multiple`: the batch rows' divisor
  (the mesh's batch devices)."""
  dp = section.dp
  eps, delta, clip = float(dp.epsilon), float(dp.delta), float(dp.clip_norm)
  if not 0 < delta < 1 / num_pairs:
    raise ConfigError(f"dp.delta must lie in (0, 1/N) = (0, {1 / num_pairs:.3g}) for N = {num_pairs} "
                      f"pairs (one per patient), got {delta}")
  if not clip > 0:
    raise ConfigError(f"dp.clip_norm must be positive, got {clip}")
  batch = float(section.batch_size)
  if batch >= num_pairs:
    raise ConfigError(f"DP needs batch_size < the number of pairs ({batch:g} >= {num_pairs}): a "
                      "batch of every pair is no sampling")
  q = batch / num_pairs
  sigma = calibrate_noise(eps, q, steps, delta)
  rows, overflow = max_rows_for(batch, num_pairs, steps, multiple)
  return PrivacyPlan(target_epsilon=eps, delta=delta, clip_norm=clip, noise_multiplier=sigma,
                     sampling_rate=q, expected_batch=batch, max_rows=rows, steps=steps,
                     num_pairs=num_pairs, seed=int(dp.seed), overflow_probability=overflow)


def poisson_rows(step: int, settings: PrivacyPlan, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
  """(row indices [max_rows], mask [max_rows], truncated) of step `step`: each pair joins with
  probability q, a pure function of (seed, step) so that a resumed run replays the same batches.
  Unused rows repeat the first drawn row (row 0 when none was drawn), masked out."""
  rng = np.random.default_rng([seed, step, 0x5D9])
  drawn = np.flatnonzero(rng.random(settings.num_pairs) < settings.sampling_rate)
  truncated = len(drawn) > settings.max_rows
  if truncated:
    drawn = np.sort(rng.choice(drawn, settings.max_rows, replace=False))
  mask = np.zeros(settings.max_rows, np.float32)
  mask[:len(drawn)] = 1.0
  fill = drawn[0] if len(drawn) else 0
  rows = np.concatenate([drawn, np.full(settings.max_rows - len(drawn), fill, np.int64)])
  return rows, mask, truncated


def check_one_row_per_patient(subject_id: np.ndarray) -> None:
  """The unit of privacy is a patient: refuse pairs in which a patient appears twice."""
  ids, counts = np.unique(np.asarray(subject_id), return_counts=True)
  if (counts > 1).any():
    raise ConfigError(f"DP fine-tuning protects one pair per patient, but subject {int(ids[counts > 1][0])} "
                      f"has {int(counts.max())} pairs; set rltf.pairs_per_patient=1 with rltf.dp")
