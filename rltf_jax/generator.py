"""The one interface every generator offers to the evaluation: base model, RLTF, SFT, LSTM, HALO.

Continuations are `PatientEvents` too, so the evaluation treats all methods alike: row `i` of the
result continues row `i` of the prompts (same subject id, sex, birth day and split), its visit
indices continue the prompt's numbering, and every generated event carries a day, an age and a
place of service.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from rltf_jax.data.events import PatientEvents


@runtime_checkable
class Generator(Protocol):
  name: str

  def complete(self, prompts: PatientEvents, *, max_new_events: int, seed: int) -> PatientEvents:
    """Generates each prompt's continuation: at most `max_new_events` events, stopping at EOS."""
    ...

  def log_likelihood(self, dataset: PatientEvents) -> np.ndarray:
    """float64 [P]: log-probability of each patient's code sequence under the model, summed over
    the tokens the model scores (`scored_log_likelihood`). May raise NotImplementedError."""
    ...

  def scored_log_likelihood(self, dataset: PatientEvents) -> tuple[np.ndarray, np.ndarray]:
    """(float64 [P] `log_likelihood`, int64 [P] how many tokens each sum runs over). A model that
    reads a window of the record scores fewer tokens than the record has events; the
    membership-inference check divides by this count. May raise NotImplementedError."""
    ...
