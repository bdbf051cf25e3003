"""One experiment with its report: every stage of `rltf_jax.pipeline.run`, then `report/report.md`
as the last stage. `launch.py`, `rltf run`, sweeps and batch jobs call `run`."""

from __future__ import annotations

from pathlib import Path

from rltf_jax import io, pipeline
from rltf_jax.reporting import report
from rltf_jax.runs import RunDir


def report_stage(cohort_dir: Path, evals: dict) -> Path:
  """Writes `cohort_dir/report/` unless its evaluations (`evals`: their finished keys) and the
  report code are unchanged, so a finished run on read-only storage only returns its path. Of a
  multi-process job process 0 alone writes it (the plots are not written through `rltf_jax.io`);
  the others return its path."""
  report_run = RunDir(cohort_dir / "report", "report", dict(version=report.REPORT_VERSION), evals)
  path = cohort_dir / "report" / "report.md"
  if io.writes_files() and report_run.regenerate():
    report_run.start()
    path = report.write_report(cohort_dir, cohort_dir / "report")
    report_run.finish()
  return path


def run(cfg, workdir: str | None = None, compilation_cache: bool = False) -> int:
  """`pipeline.run` with the report as its last stage; prints the report's path last."""
  return pipeline.run(cfg, workdir, compilation_cache, report=report_stage)
