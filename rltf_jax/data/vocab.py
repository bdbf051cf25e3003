"""Code <-> token id, shared by every stage and saved beside the data and every checkpoint.

Ids 0..3 are special tokens; codes follow in descending training frequency (ties by name), so the
table is a pure function of the training split and the pruning settings. Codes seen fewer than
`min_count` times in training become `<unk>`, except codes named in `always_include` (the cohort
targets), which are never pruned. The vocabulary is built from training patients only: a code that
occurs only in test patients is unknown to every model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from rltf_jax import io
from rltf_jax.data.codes import code_types
from rltf_jax.data.events import TRAIN, PatientEvents
from rltf_jax.errors import DataError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
NUM_SPECIAL = len(SPECIAL_TOKENS)


class Vocabulary:
  """An immutable token table. `tokens[i]` is the string of id `i`."""

  def __init__(self, tokens: Iterable[str]):
    self.tokens = tuple(tokens)
    if self.tokens[:NUM_SPECIAL] != SPECIAL_TOKENS:
      raise DataError(f"a vocabulary must start with the special tokens {SPECIAL_TOKENS}")
    if len(set(self.tokens)) != len(self.tokens):
      raise DataError("vocabulary has duplicate tokens")
    self._index = {t: i for i, t in enumerate(self.tokens)}
    self._lut_cache: dict = {}

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, Vocabulary) and self.tokens == other.tokens

  def __contains__(self, code: str) -> bool:
    return code in self._index

  @property
  def codes(self) -> tuple[str, ...]:
    return self.tokens[NUM_SPECIAL:]

  @property
  def code_type(self) -> np.ndarray:
    """int8 [V]: `CodeType` per token (specials are OTHER)."""
    return np.concatenate([np.zeros(NUM_SPECIAL, np.int8), code_types(self.codes)])

  @property
  def fingerprint(self) -> str:
    """Short hash of the token table, for cache keys."""
    return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

  def id(self, code: str) -> int:
    return self._index.get(code, UNK)

  def ids(self, codes: Iterable[str]) -> np.ndarray:
    return np.asarray([self.id(c) for c in codes], np.int32)

  def require_ids(self, codes: Iterable[str], what: str = "codes") -> np.ndarray:
    """Ids of `codes`, all of which must be in the vocabulary."""
    codes = list(codes)
    missing = [c for c in codes if c not in self._index]
    if missing:
      raise DataError(f"{what} not in the vocabulary: {', '.join(missing[:10])}")
    return self.ids(codes)

  def decode(self, ids: Iterable[int]) -> list[str]:
    return [self.tokens[int(i)] for i in ids]

  def lookup_table(self, codes: np.ndarray) -> np.ndarray:
    """int32 [C]: token id of each entry of a dataset's code table (memoised per table, since
    batch encoders call this for every batch of the same dataset)."""
    key = (len(codes), hashlib.blake2b(np.ascontiguousarray(codes).tobytes(), digest_size=16).digest())
    lut = self._lut_cache.get(key)
    if lut is None:
      lut = np.fromiter((self.id(c) for c in codes), np.int32, len(codes))
      self._lut_cache = {key: lut}  # one table at a time: datasets rarely alternate
    return lut

  def encode(self, dataset: PatientEvents) -> np.ndarray:
    """int32 [E]: token id of each event of `dataset` (vectorised through its code table)."""
    return self.lookup_table(dataset.codes)[dataset.code]

  # ---------------------------------------------------------------- build / save / load
  @classmethod
  def build(cls, dataset: PatientEvents, min_count: int = 1,
            always_include: Iterable[str] = (), max_size: int | None = None) -> "Vocabulary":
    """Builds from the training split of `dataset` (all patients if it has no training split)."""
    train = dataset.split == TRAIN
    # Counted a chunk of patients at a time, not on a copy of the split (1.5 GB for a million).
    counts = np.zeros(len(dataset.codes), np.int64)
    chunk = 1 << 16
    for lo in range(0, dataset.num_patients, chunk):
      hi = min(lo + chunk, dataset.num_patients)
      events = dataset.code[dataset.offsets[lo]:dataset.offsets[hi]]
      if train.any():
        events = events[np.repeat(train[lo:hi], dataset.lengths[lo:hi])]
      counts += np.bincount(events, minlength=len(dataset.codes))
    codes = dataset.codes
    keep = set(always_include)
    order = sorted(range(len(codes)), key=lambda i: (-counts[i], codes[i]))
    kept = [str(codes[i]) for i in order if counts[i] >= min_count and counts[i] > 0]
    if max_size is not None:
      kept = kept[:max(0, max_size - NUM_SPECIAL - len(keep))]
    extra = sorted(keep - set(kept))
    return cls(SPECIAL_TOKENS + tuple(kept) + tuple(extra))

  def save(self, path: str | Path) -> Path:
    return io.atomic_write_json(path, {"tokens": list(self.tokens), "fingerprint": self.fingerprint})

  @classmethod
  def load(cls, path: str | Path) -> "Vocabulary":
    try:
      data = json.loads(Path(path).read_text())
      vocab = cls(data["tokens"])
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise DataError(f"{path}: not a vocabulary file ({e})") from e
    if data.get("fingerprint") not in (None, vocab.fingerprint):
      raise DataError(f"{path}: fingerprint does not match its tokens; the file was edited or damaged")
    return vocab
