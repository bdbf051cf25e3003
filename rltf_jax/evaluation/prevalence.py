"""Prevalence fidelity: are codes and the cohort as common in synthetic records as in real ones?

Prevalence of a code = fraction of patients with at least one event of it. It is compared over the
union of codes in both sets of records, twice: on whole records (prompt + continuation; what a user
of the synthetic data gets, but the shared prompts inflate agreement) and on continuations only
(the part the model wrote). Agreement is Pearson r and R^2 of synthetic as a prediction of real on
the identity line (`metrics.agreement`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import metrics
from rltf_jax.evaluation.conditional import common_codes, recode


def code_prevalence(real: PatientEvents, synthetic: PatientEvents) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(codes, real prevalence, synthetic prevalence) over the union of both code tables, keeping
  codes present in at least one of them."""
  codes = common_codes(real, synthetic)
  prev = []
  for ds in (real, synthetic):
    counts = recode(ds, codes).code_patient_counts()
    prev.append(counts / max(ds.num_patients, 1))
  present = (prev[0] > 0) | (prev[1] > 0)
  return codes[present], prev[0][present], prev[1][present]


def prevalence_fidelity(real_records: PatientEvents, synthetic_records: PatientEvents,
                        real_continuations: PatientEvents, generated: PatientEvents,
                        target_codes: Iterable[str]) -> tuple[dict, dict[str, np.ndarray]]:
  """(metrics, arrays for the scatter plot and for recomputation)."""
  target_codes = list(target_codes)
  out, arrays = {}, {}
  for part, real, syn in (("records", real_records, synthetic_records),
                          ("continuations", real_continuations, generated)):
    codes, p_real, p_syn = code_prevalence(real, syn)
    out[part] = dict(**metrics.agreement(p_real, p_syn),
                     cohort_real=float(real.patients_with_any(target_codes).mean()) if len(real) else None,
                     cohort_synthetic=float(syn.patients_with_any(target_codes).mean()) if len(syn) else None)
    arrays.update({f"{part}_codes": codes, f"{part}_real": p_real, f"{part}_synthetic": p_syn})
  return out, arrays
