"""One experiment, stage by stage: data -> base model -> preference data -> fine-tunes ->
conditional generation and evaluation -> report.

Work-directory layout (`--workdir`, default `runs/<source>-<size>`), shared by every cohort so the
base model is pretrained once per data and model config:

  <workdir>/
    data-<hash>/            dataset.npz (PatientEvents with splits), vocab.json, summary.json
    base-<hash>/            pretrained base model (orbax checkpoints, vocab.json, config.json)
    <cohort>[-<run_name>]/  (run_name separates the runs of a sweep on one cohort)
      config.json           the full config of the latest finished run of this cohort
      preference/           pairs.npz + params.json (+ cached reference log-probs)
      rltf/  sft/           fine-tuned checkpoints (one per cohort and method)
      lstm/  halo/          baseline checkpoints (trained on the evaluation's modelling set)
      eval/<method>/        metrics.json, counts.npz, generated continuations
      report/               report.md, metrics.json, *.png

Each stage writes its outputs atomically and then a `DONE.json` marker holding the hash of the
config fields it depends on. A rerun skips every stage whose marker matches; a marker with a
different hash stops the run with a message instead of silently replacing finished work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rltf_jax import io
from rltf_jax.errors import ConfigError

log = logging.getLogger("rltf_jax")

METHODS = ("base", "rltf", "sft", "lstm", "halo")


def config_hash(*parts: Any) -> str:
  """Short stable hash of config sections (ConfigDicts, dicts, scalars)."""
  blob = json.dumps([_plain(p) for p in parts], sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _plain(x: Any) -> Any:
  if hasattr(x, "to_dict"):
    return _plain(x.to_dict())
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


@dataclasses.dataclass
class Stage:
  """A finished-or-not unit of work with its own directory and DONE marker."""
  name: str
  directory: Path
  key: str  # config hash this stage's outputs depend on

  @property
  def marker(self) -> Path:
    return self.directory / "DONE.json"

  def done(self) -> bool:
    if not self.marker.exists():
      return False
    recorded = json.loads(self.marker.read_text()).get("key")
    if recorded != self.key:
      raise ConfigError(
          f"{self.directory} holds finished '{self.name}' work made with a different config "
          f"(hash {recorded}, now {self.key}); use another --workdir or delete that directory")
    return True

  def finish(self, **info: Any) -> None:
    io.atomic_write_json(self.marker, dict(key=self.key, stage=self.name, finished=time.time(), **info))


def _run_stage(stage: Stage, fn: Callable[[], Any]) -> None:
  if stage.done():
    print(f"[{stage.name}] done already: {stage.directory}", flush=True)
    return
  print(f"[{stage.name}] running -> {stage.directory}", flush=True)
  t0 = time.time()
  fresh = not stage.directory.exists()
  stage.directory.mkdir(parents=True, exist_ok=True)
  try:
    info = fn() or {}
  except BaseException:
    if fresh and not any(stage.directory.iterdir()):
      stage.directory.rmdir()  # a stage that failed before writing anything leaves no trace
    raise
  stage.finish(seconds=round(time.time() - t0, 1), **info)
  print(f"[{stage.name}] finished in {time.time() - t0:.0f}s", flush=True)


def default_workdir(cfg) -> Path:
  return Path("runs") / f"{cfg.data.source}-{cfg.size}"


def run(cfg, workdir: str | None = None) -> int:
  """Runs every stage of `cfg` for its cohort; prints the report's path as the last line."""
  from rltf_jax.data.cohorts import get_cohort, require_positives

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint read at INFO
  cohort = get_cohort(cfg.cohort)
  methods = tuple(cfg.methods)
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ConfigError(f"config.methods has unknown {unknown}; choose from {METHODS}")
  root = Path(workdir or cfg.workdir or default_workdir(cfg))
  cohort_dir = root / (cohort.name + (f"-{cfg.run_name}" if cfg.run_name else ""))

  # ---------------------------------------------------------------- data
  data_stage = Stage("data", root / f"data-{config_hash(cfg.data)}", config_hash(cfg.data))
  _run_stage(data_stage, lambda: _build_data(cfg, data_stage.directory))
  dataset, vocab = _load_data(data_stage.directory)
  require_positives(dataset.subset("train"), cohort, "the training split")
  require_positives(dataset.subset("test"), cohort, "the test split")
  cohort_dir.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------- base model
  base_key = config_hash(cfg.data, cfg.model, cfg.pretrain)
  base_stage = Stage("base model", root / f"base-{base_key}", base_key)
  _run_stage(base_stage, lambda: _pretrain(cfg, dataset, vocab, base_stage.directory))
  base_ckpt = base_stage.directory

  # ---------------------------------------------------------------- preference data + fine-tunes
  # One checkpoint per cohort and method; each trainer resumes an interrupted run and returns at
  # once when its run is finished, and the preference pairs are rebuilt identically from their
  # saved parameters, so these stages are safe to re-enter.
  tuned = {}
  if {"rltf", "sft"} & set(methods):
    from rltf_jax.training import dpo, preference, sft
    print(f"[preference] {cohort.name}: {cfg.rltf.num_pairs} pairs, P={cfg.rltf.positive_fraction}",
          flush=True)
    pairs = preference.build_preference_data(dataset, cohort, cfg.rltf, cohort_dir / "preference")
    if "rltf" in methods:
      print("[rltf] DPO-Positive fine-tune", flush=True)
      tuned["rltf"] = dpo.finetune_dpo(cfg, base_ckpt, pairs, cohort_dir / "rltf")
    if "sft" in methods:
      print("[sft] supervised fine-tune on the chosen sequences", flush=True)
      tuned["sft"] = sft.finetune_sft(cfg, base_ckpt, pairs, cohort_dir / "sft")

  # ---------------------------------------------------------------- baselines (modelling set only)
  from rltf_jax.evaluation import evaluate
  plan = evaluate.select_patients(dataset, cohort, cfg.eval)
  modelling = dataset.select(np.flatnonzero(np.isin(dataset.subject_id, plan.model_subject_id)))
  if "lstm" in methods:
    from rltf_jax.training import baselines
    print(f"[lstm] training on the modelling set ({modelling.num_patients} patients)", flush=True)
    tuned["lstm"] = baselines.train_lstm(cfg, modelling, vocab, cohort_dir / "lstm")
  if "halo" in methods:
    from rltf_jax.training import baselines
    print(f"[halo] training on the modelling set ({modelling.num_patients} patients)", flush=True)
    tuned["halo"] = baselines.train_halo(cfg, modelling, vocab, cohort, cohort_dir / "halo")

  # ---------------------------------------------------------------- conditional generation + evaluation
  for method in methods:
    t0 = time.time()
    print(f"[eval] {method}: conditional generation and metrics", flush=True)
    generator = _generator(cfg, method, base_ckpt, tuned.get(method))
    members = modelling if method in ("lstm", "halo") else None
    evaluate.evaluate_generator(generator, dataset, cohort, cfg.eval, cohort_dir / "eval" / method,
                                members=members)
    print(f"[eval] {method} finished in {time.time() - t0:.0f}s", flush=True)

  # ---------------------------------------------------------------- report
  # Written last: config.json describes the finished outputs, never a rejected attempt.
  io.atomic_write_json(cohort_dir / "config.json", _plain(cfg))
  from rltf_jax.evaluation import report
  path = report.write_report(cohort_dir, cohort_dir / "report")
  print(path.resolve(), flush=True)
  return 0


def _generator(cfg, method: str, base_ckpt: Path, ckpt: Path | None):
  """The evaluation's view of `method`: a `rltf_jax.generator.Generator`."""
  e, s = cfg.eval, cfg.sampling
  if method in ("base", "rltf", "sft"):
    from rltf_jax.sampling.generator import TransformerGenerator
    return TransformerGenerator.from_checkpoint(
        base_ckpt if method == "base" else ckpt, name=method, temperature=e.temperature,
        top_k=e.top_k, top_p=e.top_p, batch_size=s.batch_size, max_prompt_len=s.max_prompt_len,
        buckets=tuple(s.buckets))
  from rltf_jax.sampling import baseline_generators
  if method == "lstm":
    return baseline_generators.LSTMGenerator.load(ckpt)
  return baseline_generators.HALOGenerator.load(ckpt)


def _build_data(cfg, out: Path) -> dict:
  from rltf_jax.data.cohorts import COHORTS
  from rltf_jax.data.load import load_dataset
  from rltf_jax.data.vocab import Vocabulary
  dataset = load_dataset(cfg.data)
  targets = [c for cohort in COHORTS.values() for c in cohort.codes]
  vocab = Vocabulary.build(dataset, min_count=cfg.data.vocab_min_count, always_include=targets,
                           max_size=cfg.data.get("vocab_max_size") or None)
  dataset.save(out / "dataset.npz")
  vocab.save(out / "vocab.json")
  summary = dataset.summary()
  summary["vocab_size"] = len(vocab)
  io.atomic_write_json(out / "summary.json", summary)
  print("  " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
  return dict(patients=dataset.num_patients, events=dataset.num_events, vocab=len(vocab))


def _load_data(directory: Path):
  from rltf_jax.data.events import PatientEvents
  from rltf_jax.data.vocab import Vocabulary
  return PatientEvents.load(directory / "dataset.npz"), Vocabulary.load(directory / "vocab.json")


def _pretrain(cfg, dataset, vocab, out: Path) -> dict:
  from rltf_jax.training import pretrain
  pretrain.pretrain(cfg, dataset, vocab, out)
  return {}
