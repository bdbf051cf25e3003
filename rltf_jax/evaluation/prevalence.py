"""Prevalence fidelity: are codes and the cohort as common in synthetic records as in real ones?

Prevalence of a code = fraction of patients with at least one event of it. Real and synthetic
data here hold the same patients (synthetic = each patient's prompt completed by the generator), so
they are compared over the codes seen in either, twice: on whole records (prompt + continuation;
what a user of the synthetic data gets, but the shared prompts inflate agreement) and on
continuations only (the part the model wrote). Agreement is Pearson r and R^2 of synthetic as a
prediction of real on the identity line (`metrics.agreement_rows`).

Their intervals resample codes, the units the agreement is computed over, keeping each code's real
and synthetic prevalence together. Resampling patients instead would add sampling noise to every
code's two prevalences and so attenuate r and R^2 in every resample: on the smoke run the
resampled interval of r, [0.14, 0.35], lay wholly below r = 0.405 itself. The cohort prevalences
(`cohort_real`, `cohort_synthetic`) are means over patients and resample patients.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import scipy.sparse as sp

from rltf_jax import io
from rltf_jax.data.events import PatientEvents
from rltf_jax.evaluation import metrics
from rltf_jax.evaluation.conditional import common_codes, recode


def presence(ds: PatientEvents, codes: np.ndarray) -> sp.csr_matrix:
  """float64 csr [P, C]: 1 where the patient has at least one event of the code (table `codes`)."""
  x = recode(ds, codes)
  m = sp.csr_matrix((np.ones(x.num_events), (x.event_patient(), x.code)),
                    shape=(x.num_patients, len(codes)))
  m.sum_duplicates()
  m.data[:] = 1.0  # presence, not counts
  return m


def prevalence_agreement(real: PatientEvents, synthetic: PatientEvents, num_samples: int, seed: int,
                         weights: np.ndarray | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """Pearson r and R^2 over codes with intervals; arrays (codes, real and synthetic prevalence).
  Prevalences are weighted by design `weights` (per patient) when given."""
  codes = common_codes(real, synthetic)
  x_real, x_syn = presence(real, codes), presence(synthetic, codes)
  n = real.num_patients
  w = np.ones(n) if weights is None else np.asarray(weights, np.float64)
  p_real = np.asarray(x_real.T @ w).ravel() / max(w.sum(), 1e-300)
  p_syn = np.asarray(x_syn.T @ w).ravel() / max(w.sum(), 1e-300)
  present = (p_real > 0) | (p_syn > 0)
  p_real, p_syn = p_real[present], p_syn[present]
  boot = metrics.bootstrap(lambda w_bxc: metrics.agreement_rows(p_real, p_syn, w_bxc),
                           len(p_real), num_samples, seed)
  out = {name: dict(value=boot["value"][i], ci95=[boot["ci95"][0][i], boot["ci95"][1][i]])
         for i, name in enumerate(("pearson_r", "r2_identity"))}
  out["num_codes"] = int(present.sum())
  return out, dict(codes=codes[present], real=p_real, synthetic=p_syn)


def prevalence_fidelity(real_records: PatientEvents, synthetic_records: PatientEvents,
                        real_continuations: PatientEvents, generated: PatientEvents,
                        target_codes: Iterable[str], num_samples: int, seed: int,
                        weights: np.ndarray | None = None) -> tuple[dict, dict[str, np.ndarray]]:
  """(metrics, arrays for the scatter plot and for recomputation, keys `<part>_codes`,
  `<part>_real`, `<part>_synthetic` for part in records, continuations); design `weights`
  make every prevalence the population's."""
  target_codes = list(target_codes)
  out, arrays = {}, {}
  for part, real, syn in (("records", real_records, synthetic_records),
                          ("continuations", real_continuations, generated)):
    agree, arr = prevalence_agreement(real, syn, num_samples, seed, weights)
    out[part] = dict(
        **agree,
        cohort_real=metrics.mean_ci(real.patients_with_any(target_codes), num_samples, seed, weights),
        cohort_synthetic=metrics.mean_ci(syn.patients_with_any(target_codes), num_samples, seed, weights))
    arrays.update({f"{part}_{k}": v for k, v in arr.items()})
  return out, arrays


def evaluate(plan, results: dict) -> tuple[dict, dict]:
  """Evaluator `prevalence` on the validation patients; saves `prevalence.npz` (the scatter plot)."""
  del results
  vi = np.flatnonzero(plan.valid)
  synthetic_records = plan.synthetic_records
  prev, arrays = prevalence_fidelity(
      plan.test.select(vi), synthetic_records.select(vi), plan.true.select(vi), plan.cut.select(vi),
      plan.cohort.codes, plan.B, plan.seed, plan.weights[plan.valid])
  prev["population"], prev["continuation"] = "validation", f"first {plan.T} generated events"
  io.atomic_savez(plan.out / "prevalence.npz", **arrays)
  return dict(prevalence=prev), {}
