"""A run's evaluations as the report reads them: collected from disk, ordered and labelled.

Shared by the report's text (`report.py`) and its figures (`plots.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from rltf_jax import methods
from rltf_jax.data.cohorts import COHORTS, Cohort, get_cohort
from rltf_jax.errors import DataError
from rltf_jax.evaluation.evaluate import METRICS_KIND
from rltf_jax.formatting import fmt, lookup  # noqa: F401  (the report's and plots' helpers)

PAPER_NOTE = "paper, on its private data"


def collect(run_dir: str | Path, skip: Path | None = None) -> dict[str, dict[str, dict]]:
  """{cohort: {method: metrics}} from every generator evaluation under `run_dir`; each metrics dict
  gains `_dir`, the folder it came from (for its .npz files)."""
  found: dict[str, dict[str, dict]] = {}
  for path in sorted(Path(run_dir).rglob("metrics.json")):
    if skip is not None and skip in path.parents:
      continue
    try:
      m = json.loads(path.read_text())
    except ValueError as e:
      raise DataError(f"{path}: not valid JSON ({e}); rerun that evaluation") from e
    if not isinstance(m, dict) or m.get("kind") != METRICS_KIND:
      continue
    cohort, method = m["cohort"], m["method"]
    if method in found.get(cohort, {}):
      raise DataError(f"two evaluations of {method!r} on {cohort!r} under {run_dir}: "
                      f"{found[cohort][method]['_dir']} and {path.parent}; keep one")
    m["_dir"] = str(path.parent)
    found.setdefault(cohort, {})[method] = m
  if not found:
    raise DataError(f"no evaluation metrics.json under {run_dir}; run the evaluation first")
  return {c: dict(sorted(ms.items(), key=lambda kv: method_rank(kv[0]))) for c, ms in
          sorted(found.items(), key=lambda kv: _cohort_rank(kv[0]))}


def cohort_of(name: str, results: dict) -> Cohort:
  """Cohort `name` of `collect`'s results: a built-in one, or a user's as its evaluations recorded
  it (`cohort_definition`; there is no registry of user cohorts)."""
  if name in COHORTS:
    return COHORTS[name]
  for m in results.get(name, {}).values():
    if "cohort_definition" in m:
      d = dict(m["cohort_definition"], codes=tuple(m["cohort_definition"]["codes"]))
      d.setdefault("chronic", not m.get("cohort_acute", True))
      return Cohort(**d)
  return get_cohort(name)


def method_rank(method: str) -> tuple[int, str]:
  return methods.sort_key(method)


def _cohort_rank(cohort: str) -> tuple[int, str]:
  names = list(COHORTS)
  return (names.index(cohort) if cohort in names else len(names), cohort)


def label(method: str) -> str:
  """The method's name in tables and legends."""
  return "Real" if method == "real" else methods.label(method)
