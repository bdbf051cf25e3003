"""Preference pairs for one target cohort, built from training patients only (method.md).

For each drawn patient with events E_1..E_L (0-based below: events[0..L-1]):

  positive (has the target; first target event at 0-based index r):
      split point j uniform in {0..r}            -> the prompt events[:j] never holds the target
      chosen   = events[j:]
      rejected = chosen without any of the cohort's codes (every target event is removed)
  negative (no target):
      split point j uniform in {0..L}            -> an empty continuation (EOS only) is possible
      chosen   = events[j:]
      rejected = chosen with one target code inserted at a uniformly random index k; the code is
                 drawn from the cohort's codes by their training frequency; its day, visit and
                 place of service are the neighbouring event's: the one just before the
                 insertion point in the record (so the code joins that visit), or the one just
                 after it when the insertion is at the very start of an empty-prompt record.

Levers beyond the paper's rule (config `rltf.positive_split`, `rltf.pairs_per_patient`; the
paper's rule is "first" and 1):
  positive_split = "any": the split point is drawn before a uniformly drawn target occurrence
      (j in {r'-K+1..r'} for that occurrence r'), so the prompt may already hold the target; the
      rejected continuation still has every target event removed, and the pair parts at the
      continuation's first target. These are the repeat pairs: a chronic cohort's evaluated
      positives are mostly patients whose history already holds the target.
  pairs_per_patient = m: each patient may be drawn up to m times (other split points and
      insertions), so N is no longer capped at one pair per cohort member.

EOS belongs to the continuation: it is what the model generates to end a record, so a
continuation that reaches the end of the record is scored with its EOS, in chosen and rejected
alike (`ends`). Patients without events are never drawn.

Long records (windows, documented choice): the prompt keeps its last `max_prompt_events` events
(the most recent history) and the continuation its first `max_continuation_events`; a
continuation cut by the window has no EOS. For positives the split point is drawn from
{max(0, r - K + 1)..r} (K = the continuation window) so the first target always lies in the window;
for a cut negative the insertion index is drawn from {0..K-1}, i.e. always before a kept event.
With windows at least as long as the records this is exactly the reading of method.md.

The pairs are stored as three `PatientEvents` (prompt, chosen and rejected; row i of each is pair
i) plus per-pair arrays, saved as `pairs.npz` and `params.json` (parameters, seeds, counts and
the source data's fingerprint) so that a rerun with the same inputs rebuilds exactly the same
pairs, and a rerun with different inputs refuses to overwrite them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from rltf_jax import io
from rltf_jax.data.cohorts import Cohort, require_positives
from rltf_jax.data.events import SPLITS, TRAIN, PatientEvents, gather_ranges
from rltf_jax.errors import ConfigError, DataError
from rltf_jax.runs import RunDir

log = logging.getLogger("rltf_jax")

PAIRS_FILE = "pairs.npz"
PARAMS_FILE = "params.json"
_PARTS = ("prompt", "chosen", "rejected")
_EVENT_FIELDS = ("subject_id", "sex", "birth_day", "split", "offsets", "code", "day", "visit", "pos",
                 "codes")
FORMAT_VERSION = 1
# Where a positive's continuation starts: "first", the paper's (before the first target, so the
# prompt never holds it), or "any" (before a uniformly drawn occurrence, so a prompt may hold
# earlier ones: the repeat pairs that teach what a chronic cohort's evaluation asks).
POSITIVE_SPLITS = ("first", "any")


@dataclasses.dataclass(frozen=True, eq=False)
class PreferenceData:
  """N preference pairs; row i of `prompt`, `chosen` and `rejected` is pair i (same subject)."""
  prompt: PatientEvents
  chosen: PatientEvents
  rejected: PatientEvents
  positive: np.ndarray     # bool [N]: the patient has the target
  split_point: np.ndarray  # int64 [N]: j, events of the record before the continuation
  edit_index: np.ndarray   # int64 [N]: chosen[:e] == rejected[:e], and they differ at e
  ends: np.ndarray         # bool [N]: the continuation reaches the record's end (EOS is scored)
  params: dict[str, Any]   # build parameters, seeds, counts, source fingerprint
  directory: Path | None = None  # where the pairs are saved (reference log-probs are cached there)

  @property
  def subject_id(self) -> np.ndarray:
    """int64 [N]: each pair's patient. The parts' own ids are these when every patient gives one
    pair; with several pairs per patient they are the pair's row (a `PatientEvents` needs unique
    ids), and this array says whose record each pair is."""
    if "pair_subject_id" in self.params:
      return np.asarray(self.params["pair_subject_id"], np.int64)
    return self.chosen.subject_id

  @property
  def num_pairs(self) -> int:
    return len(self.positive)

  def __len__(self) -> int:
    return self.num_pairs

  @property
  def fingerprint(self) -> str:
    """Hash of the pairs' contents (not of the file bytes), for cache keys."""
    h = hashlib.sha256()
    for name, arr in sorted(self._arrays().items()):
      h.update(name.encode())
      h.update(np.ascontiguousarray(arr).tobytes() if arr.dtype.kind != "U" else "\n".join(arr).encode())
    return h.hexdigest()[:16]

  def _arrays(self) -> dict[str, np.ndarray]:
    out = {}
    for part in _PARTS:
      ev = getattr(self, part)
      out.update({f"{part}.{f}": getattr(ev, f) for f in _EVENT_FIELDS})
    out.update(positive=self.positive, split_point=self.split_point, edit_index=self.edit_index,
               ends=self.ends)
    return out

  def save(self, directory: str | Path) -> Path:
    """Writes `pairs.npz` then `params.json` (the latter marks the pair set complete)."""
    directory = Path(directory)
    io.atomic_savez(directory / PAIRS_FILE, **self._arrays())
    io.atomic_write_json(directory / PARAMS_FILE, dict(self.params, fingerprint=self.fingerprint))
    return directory

  @classmethod
  def load(cls, directory: str | Path) -> "PreferenceData":
    directory = Path(directory)
    try:
      params = json.loads((directory / PARAMS_FILE).read_text())
      arrays = io.load_npz(directory / PAIRS_FILE)
      parts = {part: PatientEvents.build(
          source=f"{directory / PAIRS_FILE} ({part})",
          **{f: arrays[f"{part}.{f}"] for f in _EVENT_FIELDS}) for part in _PARTS}
      data = cls(**parts, positive=arrays["positive"].astype(bool),
                 split_point=arrays["split_point"].astype(np.int64),
                 edit_index=arrays["edit_index"].astype(np.int64), ends=arrays["ends"].astype(bool),
                 params={k: v for k, v in params.items() if k != "fingerprint"}, directory=directory)
    except (OSError, ValueError, KeyError) as e:
      raise DataError(f"{directory}: cannot read preference pairs ({e}); delete the directory to "
                      "rebuild them") from e
    if params.get("fingerprint") != data.fingerprint:
      raise DataError(f"{directory}: {PAIRS_FILE} does not match the fingerprint in {PARAMS_FILE}; "
                      "the files were edited or damaged, delete them to rebuild")
    return data


def pair_counts(data: PreferenceData) -> dict[str, Any]:
  """The pairs a fine-tune trained on against the ones it asked for (reports and sweep tables)."""
  pos, neg = int(data.positive.sum()), int((~data.positive).sum())
  n, p = int(data.params["num_pairs"]), float(data.params["positive_fraction"])
  return dict(positive_pairs=pos, negative_pairs=neg, requested_pairs=n, requested_positive_fraction=p,
              as_requested=pos + neg == n and abs(pos / max(pos + neg, 1) - p) < 0.5 / max(n, 1))


def _build_params(cfg, cohort: Cohort) -> dict[str, Any]:
  """The config fields the pairs depend on, validated."""
  n, p = int(cfg.num_pairs), float(cfg.positive_fraction)
  if n < 1:
    raise ConfigError(f"rltf.num_pairs must be at least 1, got {n}")
  if not 0.0 <= p <= 1.0:
    raise ConfigError(f"rltf.positive_fraction must lie in [0, 1], got {p}")
  for name in ("max_prompt_events", "max_continuation_events"):
    if int(cfg[name]) < 1:
      raise ConfigError(f"rltf.{name} must be at least 1, got {cfg[name]}")
  return dict(format=FORMAT_VERSION, cohort=cohort.name, target_codes=list(cohort.codes),
              num_pairs=n, positive_fraction=p, split_seed=int(cfg.split_seed),
              insert_seed=int(cfg.insert_seed), keep_proportion=bool(cfg.keep_proportion),
              max_prompt_events=int(cfg.max_prompt_events),
              max_continuation_events=int(cfg.max_continuation_events),
              **_lever_params(cfg))


def _lever_params(cfg) -> dict[str, Any]:
  """The pair levers beyond the paper's rule (`positive_split`, `pairs_per_patient`), recorded only
  when they differ from it, so pairs built by the paper's rule keep their identity."""
  split = str(cfg.get("positive_split", "first"))
  per_patient = int(cfg.get("pairs_per_patient", 1))
  if split not in POSITIVE_SPLITS:
    raise ConfigError(f"rltf.positive_split must be one of {POSITIVE_SPLITS}, got {split!r}")
  if per_patient < 1:
    raise ConfigError(f"rltf.pairs_per_patient must be at least 1, got {per_patient}")
  out = {}
  if split != "first":
    out["positive_split"] = split
  if per_patient != 1:
    out["pairs_per_patient"] = per_patient
  return out


def build_preference_data(dataset: PatientEvents, cohort: Cohort, cfg,
                          out_path: str | Path | None = None, design=None) -> PreferenceData:
  """Draws the pairs of `cohort` from the training split of `dataset` (method.md), or from the
  enriched sample's `pairs` split when `design` (`rltf_jax.data.enrich.Design`) says so; there
  negatives are drawn with probability proportional to their weight (1 / inclusion probability),
  so that they are as the population's non-members are, not as the enriched sample's.

  `cfg` is `config.rltf`. With `out_path` (a directory, a `rltf_jax.runs.RunDir` whose identity is
  the build parameters and the training split's fingerprint) the pairs are saved there; when that
  directory already holds pairs built from the same parameters and data they are loaded instead,
  and when it holds pairs built differently a `ConfigError` says so (nothing is overwritten).
  Raises `DataError` when the training split has no positive patient.
  """
  params = _build_params(cfg, cohort)
  split = design.pairs_split if design is not None else SPLITS[TRAIN]
  rows = np.flatnonzero((dataset.split == SPLITS.index(split)) & (dataset.lengths > 0))
  train = dataset.select(rows)
  if train.num_patients == 0:
    raise DataError(f"cohort {cohort.name!r}: the dataset has no patient with events in its {split} "
                    "split to draw preference pairs from")
  weights = design.weights[rows] if design is not None else np.ones(len(rows))
  params["source_fingerprint"] = train.fingerprint()
  if split != SPLITS[TRAIN]:  # (absent for the training split: earlier pairs keep their identity)
    params["source_split"] = split
    params["source_weights"] = hashlib.sha256(np.ascontiguousarray(weights).tobytes()).hexdigest()[:16]
  if out_path is None:
    return _draw_pairs(train, cohort, params, weights)
  run = RunDir(out_path, "preference", params)
  if run.done:
    log.info("preference pairs for %s: reusing %s", cohort.name, out_path)
    return PreferenceData.load(out_path)
  data = _draw_pairs(train, cohort, params, weights)
  run.start()
  data.save(out_path)
  run.finish(positive=int(data.positive.sum()), negative=int((~data.positive).sum()))
  return dataclasses.replace(data, directory=Path(out_path))


def _draw_pairs(train: PatientEvents, cohort: Cohort, params: dict[str, Any],
                weights: np.ndarray | None = None) -> PreferenceData:
  member = require_positives(train, cohort, f"the {params.get('source_split', 'train')} split")
  n, p = params["num_pairs"], params["positive_fraction"]
  max_prompt, window = params["max_prompt_events"], params["max_continuation_events"]
  pos_pool, neg_pool = np.flatnonzero(member), np.flatnonzero(~member)
  # Several pairs per patient: each patient enters its pool that many times (other split points,
  # insertion positions), still without replacement.
  per_patient = params.get("pairs_per_patient", 1)
  pos_pool, neg_pool = np.tile(pos_pool, per_patient), np.tile(neg_pool, per_patient)
  n_pos, n_neg = _pair_counts(n, p, len(pos_pool), len(neg_pool), params["keep_proportion"], cohort)

  split_rng = np.random.default_rng(params["split_seed"])
  insert_rng = np.random.default_rng(params["insert_seed"])
  neg_w = None if weights is None or np.all(weights == weights[0]) else weights[neg_pool] / weights[neg_pool].sum()
  drawn = np.concatenate([split_rng.choice(pos_pool, n_pos, replace=False),
                          split_rng.choice(neg_pool, n_neg, replace=False, p=neg_w)])
  positive = np.arange(len(drawn)) < n_pos
  order = split_rng.permutation(len(drawn))  # mix positives and negatives
  drawn, positive = drawn[order], positive[order]

  # ---- split points
  length = train.lengths[drawn]
  is_target = train.event_is_any(cohort.codes)
  first_target = train.first_position_of_any(cohort.codes)[drawn]
  anchor = first_target
  if params.get("positive_split", "first") == "any":
    anchor = _draw_occurrence(train, is_target, drawn, positive, split_rng)
  lo = np.where(positive, np.maximum(0, anchor - window + 1), 0)
  hi = np.where(positive, anchor, length)  # inclusive
  split = lo + np.floor(split_rng.random(len(drawn)) * (hi - lo + 1)).astype(np.int64)
  if params.get("positive_split", "first") == "any":
    first_target = np.where(positive, _next_occurrence(train, is_target, drawn, split), first_target)
  prompt_start = np.maximum(0, split - max_prompt)
  cont_end = np.minimum(length, split + window)
  ends = cont_end == length
  base = train.offsets[drawn]

  prompt_ev = gather_ranges(base + prompt_start, split - prompt_start)
  chosen_lens = cont_end - split
  chosen_ev = gather_ranges(base + split, chosen_lens)

  # ---- rejected: removal for positives, one insertion for negatives
  pair_of_chosen = np.repeat(np.arange(len(drawn)), chosen_lens)
  keep = ~(positive[pair_of_chosen] & is_target[chosen_ev])
  # Insertion index k: {0..n_c} when the continuation ends in the window, else {0..n_c - 1}.
  n_slots = chosen_lens + ends
  k = np.floor(insert_rng.random(len(drawn)) * n_slots).astype(np.int64)
  target_ids = train.code_ids(cohort.codes)
  weights = train.code_counts()[target_ids].astype(np.float64)
  insert_code = target_ids[insert_rng.choice(len(target_ids), len(drawn), p=weights / weights.sum())]
  # Neighbour: the record's event just before the insertion point, or just after it at index 0.
  at = split + k
  neighbour = base + np.where(at > 0, at - 1, 0)
  ins = np.flatnonzero(~positive)
  # Merge kept chosen events and inserted events per pair by a sort key: event t of a pair sorts
  # at 2t + 1, an insertion before index k at 2k.
  within = np.arange(len(chosen_ev)) - np.repeat(np.cumsum(chosen_lens) - chosen_lens, chosen_lens)
  keys = np.concatenate([pair_of_chosen[keep] * (2 * window + 4) + 2 * within[keep] + 1,
                         ins * (2 * window + 4) + 2 * k[ins]])
  src = np.concatenate([chosen_ev[keep], neighbour[ins]])
  code = np.concatenate([train.code[chosen_ev[keep]], insert_code[ins]])
  rej_pair = np.concatenate([pair_of_chosen[keep], ins])
  order = np.argsort(keys, kind="stable")
  src, code, rej_pair = src[order], code[order], rej_pair[order]
  rejected_lens = np.bincount(rej_pair, minlength=len(drawn))

  edit_index = np.where(positive, first_target - split, k)
  params = dict(params, num_positive=int(n_pos), num_negative=int(n_neg))

  pair_ids = train.subject_id[drawn]
  repeated = len(np.unique(drawn)) < len(drawn)
  if repeated:  # several pairs of one patient: the parts are keyed by pair row (see `subject_id`)
    params["pair_subject_id"] = pair_ids.tolist()

  def events(ev_idx, lens, code_idx=None):
    offsets = np.concatenate([[0], np.cumsum(lens)])
    return PatientEvents.build(
        subject_id=np.arange(len(drawn)) if repeated else pair_ids, sex=train.sex[drawn], birth_day=train.birth_day[drawn],
        split=np.zeros(len(drawn), np.int8), offsets=offsets,
        code=train.code[ev_idx] if code_idx is None else code_idx, day=train.day[ev_idx],
        visit=train.visit[ev_idx], pos=train.pos[ev_idx], codes=train.codes,
        source=f"preference pairs of cohort {cohort.name!r}")

  return PreferenceData(
      prompt=events(prompt_ev, split - prompt_start), chosen=events(chosen_ev, chosen_lens),
      rejected=events(src, rejected_lens, code), positive=positive, split_point=split,
      edit_index=edit_index, ends=ends, params=dict(params, request=_request(params)))


def _draw_occurrence(train: PatientEvents, is_target: np.ndarray, drawn: np.ndarray,
                     positive: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """int64 [len(drawn)]: for positives, the record position of one of the patient's target events,
  drawn uniformly among them; -1 for negatives."""
  target_event = np.flatnonzero(is_target)  # sorted, so each patient's occurrences are contiguous
  first = np.searchsorted(target_event, train.offsets[drawn])
  count = np.searchsorted(target_event, train.offsets[drawn + 1]) - first
  pick = first + np.floor(rng.random(len(drawn)) * np.maximum(count, 1)).astype(np.int64)
  position = target_event[np.minimum(pick, len(target_event) - 1)] - train.offsets[drawn]
  return np.where(positive, position, -1)


def _next_occurrence(train: PatientEvents, is_target: np.ndarray, drawn: np.ndarray,
                     split: np.ndarray) -> np.ndarray:
  """int64 [len(drawn)]: record position of each patient's first target event at or after `split`
  (the chosen continuation's first target: where chosen and rejected part)."""
  target_event = np.flatnonzero(is_target)
  at = np.searchsorted(target_event, train.offsets[drawn] + split)
  return target_event[np.minimum(at, len(target_event) - 1)] - train.offsets[drawn]


def _request(params: dict[str, Any]) -> dict[str, Any]:
  """The part of `params` a rerun must match to reuse saved pairs."""
  return {k: v for k, v in params.items()
          if k not in ("num_positive", "num_negative", "request", "pair_subject_id")}


def _pair_counts(n: int, p: float, pos_avail: int, neg_avail: int, keep_proportion: bool,
                 cohort: Cohort) -> tuple[int, int]:
  """Positives and negatives to draw, shrinking (with a warning) when the data holds too few."""
  want_pos = int(round(n * p))
  want_neg = n - want_pos
  if want_pos <= pos_avail and want_neg <= neg_avail:
    return want_pos, want_neg
  if keep_proportion:
    # Shrink N so that the proportion P still holds (method.md: "smaller when the data has fewer
    # positives").
    scale = min(pos_avail / want_pos if want_pos else 1.0, neg_avail / want_neg if want_neg else 1.0)
    n_pos = min(pos_avail, int(round(want_pos * scale)))
    n_neg = min(neg_avail, int(round(want_neg * scale)))
  else:
    n_pos = min(pos_avail, want_pos)
    n_neg = min(neg_avail, n - n_pos)
  log.warning(
      "cohort %r: asked for %d preference pairs with positive proportion %.2f (%d positive, %d "
      "negative) but the pairs' source split has %d positive and %d negative patients; using %d "
      "positive and %d negative pairs (%s)", cohort.name, n, p, want_pos, want_neg, pos_avail,
      neg_avail, n_pos, n_neg, "proportion kept, N reduced" if keep_proportion else
      "N kept where negatives allow, proportion changed")
  if n_pos + n_neg == 0:
    raise DataError(f"cohort {cohort.name!r}: no preference pair can be drawn ({pos_avail} positive, "
                    f"{neg_avail} negative training patients with events)")
  return n_pos, n_neg
