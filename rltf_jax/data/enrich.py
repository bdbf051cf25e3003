"""Rarity where the model learns, positives where we measure: the cohort-enriched sample.

The base model pretrains on the population (`data.num_patients`, every cohort at the paper's
Table-4 prevalence), where SCD is 18 of 50,000 patients. Preference pairs and the evaluation of a
rare cohort (the paper's rare ones, `Cohort.rare_in_paper`) draw their patients from a sample
enriched in that cohort, with known inclusion probabilities, so that every number that depends on
prevalence is weighted back to the population (Hajek ratio estimators: each patient counts
1 / inclusion probability).

Simulator (`data.enrich.patients` > 0): further patients from the same population law, in draws of
`data.num_patients` each (the pretraining draw's size, so exact-count cohorts have the same
prevalence), with seeds distinct from the pretraining draw's. Each patient is kept with
probability max(other_rate, r_c for each rare cohort c whose condition they have), r_c =
min(1, members_per_cohort / (prevalence_c x patients)); see `story.simulate_subsample`, which draws
visits and codes only for the kept ones. Kept patients are split by a hash of their subject id into
the `pairs` split (preference pairs) and the `eval` split (evaluation).

MEDS / MIMIC, or a cohort that is not enriched: no further patients exist. Pairs come from the
training split and the evaluation from the test split; the evaluation still subsamples by stratum
(`stratified_sample`), all members first, with the same weights.

The inclusion probabilities are saved beside the dataset (`design.npz`): 1 for the population's
own patients.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import time
from pathlib import Path

import numpy as np

from rltf_jax import io
from rltf_jax.data.cohorts import COHORTS, Cohort
from rltf_jax.data.events import SPLITS, PatientEvents, assign_splits, concat
from rltf_jax.errors import DataError

DESIGN_FILE = "design.npz"
ID_STRIDE = 10**10  # pool draw d's subject ids are (d + 1) * ID_STRIDE + 1-based index


@dataclasses.dataclass(frozen=True)
class Design:
  """Where one cohort's pairs and evaluation come from, and every patient's inclusion probability."""
  pairs_split: str          # "pairs" (enriched sample) or "train"
  eval_split: str           # "eval" (enriched sample) or "test"
  inclusion: np.ndarray     # float64 [num_patients], aligned with the dataset
  enriched: bool

  @property
  def weights(self) -> np.ndarray:
    return 1.0 / self.inclusion


def enriched_cohorts() -> tuple[str, ...]:
  return tuple(name for name, c in COHORTS.items() if c.rare_in_paper)


def pool_rates(sim_cfg, enrich_cfg) -> dict[str, float]:
  """Keep rate of each enriched cohort's members: enough for `members_per_cohort` of them."""
  n = int(enrich_cfg.patients)
  rates = {}
  for name in enriched_cohorts():
    expected = float(sim_cfg.conditions[name].prevalence) * n
    rates[name] = min(1.0, int(enrich_cfg.members_per_cohort) / max(expected, 1e-12))
  return rates


def _draw_one(args):
  from rltf_jax.data.simulate import story  # in the worker process
  sim_cfg, size, seed, rates, other_rate, offset = args
  return story.simulate_subsample(sim_cfg, size, seed, rates, other_rate, offset)


def draw_pool(sim_cfg, data_cfg) -> tuple[PatientEvents, np.ndarray]:
  """The enriched sample (see the module doc): records with splits `pairs` / `eval`, and each
  kept patient's inclusion probability. A pure function of the configs."""
  ec = data_cfg.enrich
  size = int(data_cfg.num_patients)
  draws = max(1, -(-int(ec.patients) // size))
  rates = pool_rates(sim_cfg, ec)
  # Seed (data.seed + 1) * 2^32 + d: never a pretraining draw's seed (data.seed < 2^32).
  jobs = [(sim_cfg, size, ((int(data_cfg.seed) + 1) << 32) + d, rates, float(ec.other_rate),
           (d + 1) * ID_STRIDE) for d in range(draws)]
  t0 = time.time()
  parts = []
  workers = max(1, int(ec.workers))
  if workers == 1:
    results = map(_draw_one, jobs)
  else:  # spawn: the parent may hold JAX's threads, which fork would copy mid-flight
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    results = pool.map(_draw_one, jobs)
  try:
    for d, part in enumerate(results):
      parts.append(part)
      if (d + 1) % max(1, draws // 10) == 0 or d + 1 == draws:
        kept = sum(len(p[1]) for p in parts)
        print(f"  [enrich] {(d + 1) * size:,} of {draws * size:,} patients drawn, {kept:,} kept "
              f"({time.time() - t0:.0f}s)", flush=True)
  finally:
    if workers > 1:
      pool.shutdown()
  pool_ds = concat([p[0] for p in parts])
  inclusion = np.concatenate([p[1] for p in parts])
  in_pairs = assign_splits(pool_ds.subject_id, (float(ec.pairs_fraction), 0.0, 1.0 - float(ec.pairs_fraction)),
                           int(data_cfg.split_seed)) == 0
  split = np.where(in_pairs, SPLITS.index("pairs"), SPLITS.index("eval")).astype(np.int8)
  return pool_ds.with_splits(split), inclusion


def save_design(directory: Path, subject_id: np.ndarray, inclusion: np.ndarray, cohorts) -> None:
  io.atomic_savez(Path(directory) / DESIGN_FILE, subject_id=np.asarray(subject_id, np.int64),
                  inclusion=np.asarray(inclusion, np.float64), cohorts=np.array(list(cohorts), str))


def load_design(directory: Path, dataset: PatientEvents, cohort: Cohort) -> Design:
  """The design of `cohort` on the dataset saved in `directory` (no design file: every patient
  of the population, inclusion 1)."""
  path = Path(directory) / DESIGN_FILE
  if not path.exists():
    return Design("train", "test", np.ones(dataset.num_patients), False)
  z = io.load_npz(path)
  if not np.array_equal(z["subject_id"], dataset.subject_id):
    raise DataError(f"{path}: its subject ids are not the dataset's; delete the data directory "
                    f"{Path(directory)} to rebuild it")
  enriched = cohort.name in set(z["cohorts"].tolist()) and \
      bool(np.any(dataset.split == SPLITS.index("eval")))
  if not enriched:
    return Design("train", "test", np.ones(dataset.num_patients), False)
  return Design("pairs", "eval", z["inclusion"].astype(np.float64), True)


def stratified_sample(inclusion: np.ndarray, member: np.ndarray, num: int, member_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(sorted chosen indices, each chosen one's inclusion probability in the population).

  Draws `num` of the given patients (`num` <= 0 or more than there are: all): the cohort's members first (at most `member_fraction` of
  `num`), then non-members. Within each (member?, prior inclusion) cell it is a simple random
  sample without replacement, allocated so that patients of one stratum end with equal inclusion
  probability wherever the cells allow (cells are taken whole when they are too small): the
  weights then vary as little as the design lets them. Inclusion = prior x taken / cell size."""
  inclusion, member = np.asarray(inclusion, np.float64), np.asarray(member, bool)
  rng = np.random.default_rng(seed)
  n = len(member)
  if num <= 0 or num >= n:  # everyone: nothing to choose
    return np.arange(n, dtype=np.int64), inclusion.copy()
  want_member = min(int(member.sum()), int(np.floor(member_fraction * num)))
  want = {True: want_member, False: num - want_member}
  if want[False] > int((~member).sum()):  # too few non-members: fill with members
    want[False] = int((~member).sum())
    want[True] = min(int(member.sum()), num - want[False])
  chosen, prob = [], []
  for stratum in (True, False):
    idx = np.flatnonzero(member == stratum)
    values, cell = np.unique(inclusion[idx], return_inverse=True)
    sizes = np.bincount(cell, minlength=len(values)).astype(np.float64)
    take = _allocate(sizes, values, want[stratum])
    for c in range(len(values)):
      members_c = idx[cell == c]
      k = int(take[c])
      pick = rng.choice(members_c, k, replace=False) if k < len(members_c) else members_c
      chosen.append(pick)
      prob.append(np.full(len(pick), values[c] * (k / len(members_c)) if len(members_c) else 0.0))
  chosen, prob = np.concatenate(chosen).astype(np.int64), np.concatenate(prob)
  order = np.argsort(chosen)
  return chosen[order], prob[order]


def _allocate(sizes: np.ndarray, prior: np.ndarray, total: int) -> np.ndarray:
  """Integer sample sizes per cell, min(size, r x size / prior) with r set so they sum to `total`:
  equal final inclusion (prior x taken / size = r) in every cell that is not taken whole."""
  if total <= 0 or len(sizes) == 0:
    return np.zeros(len(sizes), np.int64)
  if total >= sizes.sum():
    return sizes.astype(np.int64)
  lo, hi = 0.0, float(prior.max())
  for _ in range(100):  # bisection on r: the sum grows with r
    r = (lo + hi) / 2
    if np.minimum(sizes, r * sizes / prior).sum() < total:
      lo = r
    else:
      hi = r
  take = np.minimum(sizes, hi * sizes / prior)
  base = np.floor(take).astype(np.int64)
  short = total - int(base.sum())  # largest remainders get the rounding
  if short > 0:
    room = np.flatnonzero(base < sizes)
    order = room[np.argsort(-(take - base)[room], kind="stable")]
    base[order[:short]] += 1
  return base
