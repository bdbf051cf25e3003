"""One experiment, stage by stage: data -> base model -> preference data -> each method's training
-> conditional generation and evaluation -> report.

Work-directory layout (`--workdir`, default `runs/<source>-<size>`), shared by every cohort so the
base model is pretrained once per data and model config:

  <workdir>/
    data-<hash>/            dataset/ (PatientEvents with splits, one .npy per field), vocab.json, summary.json
    base-<hash>/            pretrained base model (orbax checkpoints, vocab.json, model_config.json)
    <cohort>[-<run_name>]/  (run_name separates the runs of a sweep on one cohort)
      config.json           the full config of the latest finished run of this cohort
      preference/           pairs.npz + params.json (+ cached reference log-probs)
      rltf/  sft/           fine-tuned checkpoints (one per cohort and method)
      lstm/  halo/          baseline checkpoints (trained on the evaluation's modelling set)
      eval/<method>/        metrics.json, counts.npz, generated continuations
      report/               report.md, metrics.json, *.png

Every stage's directory is a `rltf_jax.runs.RunDir`: its `run.json` holds the config fields and
the input fingerprints its outputs depend on (each stage lists the keys of the stages it reads), so
a rerun reuses finished work with the same identity, resumes unfinished work, and refuses, with a
message, a directory whose work was made from other settings or inputs. Methods are found by name
(`rltf_jax.methods`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging as absl_logging

from rltf_jax.configs import base as base_config
from rltf_jax import io, methods, runs
from rltf_jax.data.cohorts import (COHORTS, Cohort, aces_members, aces_task_labels, get_cohort,
                                   is_definition, read_definition, require_positives, resolve)
from rltf_jax.data import enrich, meds
from rltf_jax.data.source_codes import SourceCodes, scan_meds
from rltf_jax.data.events import PatientEvents, concat
from rltf_jax.data.load import load_with_report, simulator_config
from rltf_jax.data.vocab import Vocabulary
from rltf_jax.errors import ConfigError
from rltf_jax.evaluation import calibration, dataset_privacy, evaluate, forecast, utility
from rltf_jax.names import check_name
from rltf_jax.runs import RunDir
from rltf_jax.training import preference, pretrain
from rltf_jax.training.mesh import sync

log = logging.getLogger("rltf_jax")
DATASET = "dataset"  # the data stage's dataset: a directory that later stages memory-map


@dataclasses.dataclass
class Context:
  """What a method's `train` and `generator` read (`rltf_jax.methods`)."""
  cfg: object
  cohort: Cohort
  cohort_dir: Path
  dataset: PatientEvents
  vocab: Vocabulary
  base_dir: Path
  design: enrich.Design  # where pairs and evaluation draw from, and the inclusion probabilities
  source: SourceCodes | None = None  # how the source spelled its codes (None: canonically)

  @functools.cached_property
  def pairs(self) -> preference.PreferenceData:
    """The cohort's preference pairs (built on first use, then reused from disk)."""
    rc = self.cfg.rltf
    print(f"[preference] {self.cohort.name}: {rc.num_pairs} pairs, P={rc.positive_fraction}", flush=True)
    return preference.build_preference_data(self.dataset, self.cohort, rc, self.cohort_dir / "preference",
                                            design=self.design)

  @functools.cached_property
  def plan(self) -> evaluate.EvalPatients:
    return evaluate.select_patients(self.dataset, self.cohort, self.cfg.eval, self.design)

  @functools.cached_property
  def modelling(self) -> PatientEvents:
    """The evaluation's modelling set: what the LSTM and HALO baselines train on."""
    return self.dataset.select(np.flatnonzero(np.isin(self.dataset.subject_id, self.plan.model_subject_id)))


def workdir_of(cfg, workdir: str | Path | None = None) -> Path:
  """The work directory: `workdir` (the --workdir flag), else `cfg.workdir`, else
  runs/<data source>-<size>."""
  return Path(workdir or cfg.workdir or Path("runs") / f"{cfg.data.source}-{cfg.size}")


def _announce(name: str, directory: Path) -> float:
  print(f"[{name}] {'done already' if runs.is_done(directory) else 'running'}: {directory}", flush=True)
  return time.time()


def require_fields(cfg, reference, where: str = "config") -> None:
  """A `ConfigError` naming the first field of `reference` (the base config of the same size) that
  `cfg` lacks: the library reads every field without a fallback, so a config written by hand or
  for an older version is checked here, before any work starts."""
  for name, ref in reference.items():
    if name not in cfg:
      raise ConfigError(f"{where}.{name} is missing; rltf_jax/configs/base.py defines it (start a "
                        "config from base.get_config() so that every field has its default)")
    # The simulator's table is checked by the simulator itself, and only when it draws.
    if isinstance(ref, ml_collections.ConfigDict) and name != "simulator":
      require_fields(cfg[name], ref, f"{where}.{name}")


_RANGE = re.compile(r"^(int)?(?:(>=|>)(-?[\d.]+)|([\[(])(-?[\d.]+),(-?[\d.]+)([\])]))$")


def check_ranges(cfg, ranges: dict) -> None:
  """A `ConfigError` naming the first numeric field outside its range (the ranges declared beside
  the fields in `rltf_jax/configs/base.py`, collected as `RANGES`), before any work starts: a batch size of 0, a negative step count or a NaN learning rate would
  otherwise fail deep inside a stage, or not at all."""
  for section, fields in ranges.items():
    for name, spec in fields.items():
      part = cfg
      for key in section.split("."):
        part = part[key]
      value, m = part[name], _RANGE.match(spec)
      integer, op, bound, lo_br, lo, hi, hi_br = m.groups()
      ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
      if ok and integer:
        ok = float(value).is_integer()
      if ok and op:
        ok = value >= float(bound) if op == ">=" else value > float(bound)
      elif ok:
        ok = ((value >= float(lo)) if lo_br == "[" else (value > float(lo))) and \
             ((value <= float(hi)) if hi_br == "]" else (value < float(hi)))
      if not ok:
        kind = "an integer" if integer else "a number"
        bound = spec.removeprefix("int")
        raise ConfigError(f"{section}.{name}={value!r} is out of range: it must be {kind} "
                          f"{bound if op else 'in ' + bound}")


def use_compilation_cache(root: str | Path) -> None:
  """Keeps XLA's compiled programs in `<root>/jax_cache` (unless JAX_COMPILATION_CACHE_DIR names
  another place), so a further cohort or a rerun in the same work directory loads what an earlier
  run compiled (the fine-tunes' and the sampler's length buckets, the evaluation's programs)
  instead of compiling it again. The command lines call it, not the library: the setting is global
  to the process, and tests in one process must not share a cache in a deleted directory."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", str(Path(root).absolute() / "jax_cache"))


def run(cfg, workdir: str | None = None, compilation_cache: bool = False,
        report: Callable[[Path, dict], Path] | None = None) -> int:
  """Runs every stage of `cfg` for its cohort; prints the report's path (or, without `report`,
  the cohort directory's) as the last line.

  `report(cohort_dir, finished evaluations' keys) -> report path` is the last stage; the
  reporting layer supplies it (`rltf_jax.reporting.experiment.run`), so nothing here imports it.
  The work directory is locked for the run (`runs.workdir_lock`): a second run on it stops at once
  with a one-line message instead of corrupting the first one's checkpoints and metrics.
  `compilation_cache`: `use_compilation_cache(work directory)` first (launch.py sets it)."""
  require_fields(cfg, base_config.get_config(cfg.size if "size" in cfg else None))
  check_ranges(cfg, base_config.RANGES)
  check_names(cfg)  # a malformed definition, an unknown cohort or an unsafe name: before any write
  root = workdir_of(cfg, workdir)
  if compilation_cache:
    use_compilation_cache(root)
  with runs.workdir_lock(root):
    return _run(cfg, root, report)


def _run(cfg, root: Path, report: Callable[[Path, dict], Path] | None) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every checkpoint read at INFO
  chosen = [methods.get(name) for name in cfg.methods]
  cohort_dir = cohort_dir_of(cfg, root)

  # ---------------------------------------------------------------- data
  build_data(cfg, root)
  ctx = open_context(cfg, root)
  dataset, base_dir, design, cohort = ctx.dataset, ctx.base_dir, ctx.design, ctx.cohort
  ctx.plan  # the evaluation's patients exist (eval.truncate_events fits them): fail before training
  warn_if_not_rare(ctx)
  cohort_dir.mkdir(parents=True, exist_ok=True)

  # ---------------------------------------------------------------- base model
  t0 = _announce("base model", base_dir)
  pretrain.pretrain(cfg, dataset, ctx.vocab, base_dir)
  print(f"[base model] ready in {time.time() - t0:.0f}s", flush=True)

  # ---------------------------------------------------------------- each method's training
  # Every trainer resumes an interrupted run and returns at once when its run is finished.
  checkpoints = {}
  for name, method in zip(cfg.methods, chosen):
    if name != "base":
      print(f"[{name}] training {method.LABEL}", flush=True)
    checkpoints[name] = method.train(ctx)
    sync(f"{name}: trained")

  # ---------------------------------------------------------------- conditional generation + evaluation
  # The base model first: its forecast draws tune every method's logit-bias anchor.
  order = sorted(zip(cfg.methods, chosen), key=lambda item: item[0] != "base")
  base_eval = cohort_dir / "eval" / "base"
  fits = utility.FitCache()  # the methods' evaluations share their real and prompt-only fits
  for name, method in order:
    out = cohort_dir / "eval" / name
    t0 = _announce(f"eval {name}", out)
    inputs = dict(model=runs.finished_key(checkpoints[name]), sampling=runs.digest(cfg.sampling))
    base_forecast = None
    if name == "base":
      base_forecast = forecast.SELF
    elif "base" in cfg.methods:
      base_forecast = base_eval / "test_forecast.npz"
      inputs["base_eval"] = runs.finished_key(base_eval)
    generator = build_generator(ctx, name, checkpoints[name])
    if getattr(generator, "calibration", None) is not None:
      inputs["calibration"] = runs.digest(generator.calibration)
    training = method.describe(ctx)
    if getattr(generator, "calibration", None) is not None:
      training = dict(training, calibration=generator.calibration)
    evaluate.evaluate_generator(
        generator, dataset, cohort, cfg.eval, out,
        trained_on=method.trained_on(ctx), training=training, design=design,
        inputs=inputs, base_forecast=base_forecast, fits=fits)
    sync(f"eval {name}: written")  # the next method's evaluation reads the base model's
    print(f"[eval] {name} ready in {time.time() - t0:.0f}s", flush=True)

  # ---------------------------------------------------------------- privacy of the released records
  # Every method's released records against the fine-tune's training patients (dataset_privacy).
  eval_dirs = {name: cohort_dir / "eval" / name for name in cfg.methods}
  fine_tuned = [name for name in ("rltf", "sft") if name in cfg.methods]
  reference = methods.get(fine_tuned[0]).trained_on(ctx) if fine_tuned else None
  privacy_run = RunDir(cohort_dir / "privacy", "privacy", dict(version=dataset_privacy.RUN_VERSION),
                       dict(evals={n: runs.finished_key(d) for n, d in eval_dirs.items()},
                            reference=runs.digest(sorted(set(np.asarray(reference).tolist())))
                            if reference is not None else "training split"))
  if privacy_run.regenerate():
    t0 = _announce("privacy", privacy_run.path)
    privacy_run.start()
    dataset_privacy.evaluate_run(ctx, eval_dirs, reference, privacy_run.path, seed=int(cfg.eval.seed))
    privacy_run.finish()
    print(f"[privacy] ready in {time.time() - t0:.0f}s", flush=True)
  sync("privacy: written")

  # ---------------------------------------------------------------- report
  # Written last: config.json describes the finished outputs, never a rejected attempt. A report
  # whose evaluations (and the report code) are unchanged is not rewritten, so a finished run on
  # read-only storage only prints its path.
  config = runs.plain(cfg)
  config_path = cohort_dir / "config.json"
  if not config_path.exists() or json.loads(config_path.read_text()) != json.loads(json.dumps(config)):
    io.atomic_write_json(config_path, config)
  evals = {p.name: runs.finished_key(p) for p in sorted((cohort_dir / "eval").iterdir()) if runs.is_done(p)}
  evals["privacy"] = runs.finished_key(privacy_run.path)
  path = report(cohort_dir, evals) if report is not None else cohort_dir
  sync("report: written")
  print(path.resolve(), flush=True)
  return 0


def build_data(cfg, root: Path) -> RunDir:
  """The data stage of `cfg` in `root` (load the source, split it, build the vocabulary), unless
  it is finished. Of a multi-process job every process runs it and process 0 alone writes: each
  decides on what it read before process 0 writes anything, and reads nothing before process 0's
  files are complete (`training.mesh.sync`)."""
  data_run = RunDir(data_dir(cfg, root), "data", cfg.data)
  t0 = _announce("data", data_run.path)
  done = data_run.done
  sync("data: run directory read")
  if not done:
    _build_data(cfg, data_run)
    print(f"[data] finished in {time.time() - t0:.0f}s", flush=True)
  sync("data: written")
  return data_run


def build_generator(ctx: Context, name: str, checkpoint):
  """Method `name`'s generator; with `cfg.<name>.calibrate = "stratum"`, calibrated first
  (`rltf_jax.evaluation.calibration`: two target logit biases tuned on patients of the evaluation's
  split that it does not score, saved beside the checkpoint and reused while the checkpoint and settings are the same)."""
  generator = methods.get(name).generator(ctx, checkpoint)
  section = ctx.cfg.get(name)
  mode = section.get("calibrate", "none") if section is not None else "none"
  if mode not in calibration.MODES:
    raise ConfigError(f"{name}.calibrate must be one of {calibration.MODES}, got {mode!r}")
  if mode == "stratum":
    generator.calibration = calibration.calibrate(
        generator, ctx.dataset, ctx.plan, ctx.cohort.codes, ctx.cfg.eval, ctx.cfg.calibration,
        ctx.cohort_dir / name / "calibration",
        dict(model=runs.finished_key(checkpoint), validation=runs.digest(ctx.plan.valid_subject_id.tolist()),
             cohort=list(ctx.cohort.codes)), design=ctx.design)
    print(f"[{name}] calibrated: target logit bias {generator.calibration['new_onset']:+.2f} "
          f"(new onset), {generator.calibration['repeat']:+.2f} (repeat)", flush=True)
  return generator


def warn_if_not_rare(ctx: Context) -> float:
  """The cohort's prevalence on the training split, in percent, with a warning when it is above
  `rare_warn_percent` (a "rare" cohort at 72% runs, and says so)."""
  limit = ctx.cfg.rare_warn_percent
  if not isinstance(limit, (int, float)) or not 0 <= limit <= 100:
    raise ConfigError(f"rare_warn_percent={limit!r} is out of range: it must be a number in [0, 100]")
  train = ctx.dataset.subset("train")
  percent = 100.0 * float(train.patients_with_any(ctx.cohort.codes).mean()) if train.num_patients else 0.0
  if percent > limit:
    log.warning("cohort %r is in %.1f%% of the training split's %d patients, above rare_warn_percent="
                "%g: not a rare condition, which the method is for", ctx.cohort.name, percent,
                train.num_patients, limit)
    print(f"[cohort] warning: {ctx.cohort.name} is in {percent:.1f}% of the training split "
          f"(rare_warn_percent={limit:g}): not rare", flush=True)
  return percent


def data_dir(cfg, root: Path) -> Path:
  return root / f"data-{runs.digest(cfg.data)[:10]}"


def base_digest(cfg) -> str:
  """The base model's key: the data config without `data.enrich` (the enriched sample is not in
  the pretraining splits), the model and pretraining. Sweeps over N, P or the enrichment share it."""
  population = {k: v for k, v in runs.plain(cfg.data).items() if k != "enrich"}
  return runs.digest(population, cfg.model, cfg.pretrain)


def check_names(cfg) -> None:
  """Every name that becomes a path (the cohort's, the run's, each method's) is safe
  (`names.check_name`), and the cohort exists and parses: checked before any work."""
  cohort_name(cfg.cohort)
  if cfg.run_name:
    check_name(cfg.run_name, "run_name")
  for name in cfg.methods:
    methods.get(name)


def cohort_name(spec: str) -> str:
  """A built-in cohort's key, or a user definition's name (`rltf_jax.data.cohorts`)."""
  return read_definition(spec)["name"] if is_definition(spec) else get_cohort(spec).name


def cohort_dir_of(cfg, root: Path) -> Path:
  return root / (cohort_name(cfg.cohort) + (f"-{cfg.run_name}" if cfg.run_name else ""))


def open_run(run_dir: str | Path) -> Context:
  """The `Context` of a finished cohort directory (its `config.json` says how it was made), for
  readers (synthesize, the privacy command, reports): reads, writes nothing."""
  run_dir = Path(run_dir)
  path = run_dir / "config.json"
  if not path.exists():
    raise ConfigError(f"{run_dir}: no config.json; pass a finished cohort directory of launch.py "
                      "(e.g. runs/simulator-default/scd)")
  cfg = ml_collections.ConfigDict(json.loads(path.read_text()))
  return open_context(cfg, run_dir.parent, write=False)


def open_context(cfg, root: Path, write: bool = True) -> Context:
  """The `Context` of `cfg`'s cohort in work directory `root`, once its data stage is finished.
  `write`: save the resolved user cohort (`cohort.json`) and a real dataset's cohort labels
  beside the run (the pipeline does; `open_run` does not)."""
  path = data_dir(cfg, root)
  if not runs.is_done(path):
    raise ConfigError(f"{path}: the data stage of this config is not finished; run launch.py first")
  dataset = (PatientEvents.open_mapped(path / DATASET) if (path / DATASET).is_dir()
             else PatientEvents.load(path / "dataset.npz"))  # a data stage of before the mapped layout
  vocab = Vocabulary.load(path / "vocab.json")
  source = source_codes_of(cfg, path)
  labels = None
  if is_definition(cfg.cohort):
    cohort, labels = _user_cohort(cfg, root, dataset, source, write)
  else:
    cohort = get_cohort(cfg.cohort)
  if write and cfg.data.source != "simulator":
    # The cohort on the real dataset's own subjects, in the MEDS label schema (whole-record labels;
    # an ACES cohort's labels are es-aces's).
    # An ACES task config's labels are the rows ACES extracts (one per trigger).
    task = is_definition(cfg.cohort) and cfg.data.source == "meds" and read_definition(cfg.cohort).get("task")
    table = (aces_task_labels(read_definition(cfg.cohort), cfg.data.path, dataset.subject_id) if task
             else meds.cohort_labels(dataset, cohort.codes, member=labels))
    meds.write_labels(table, cohort_dir_of(cfg, root) / "labels" / f"{cohort.name}.parquet")
  design = enrich.load_design(path, dataset, cohort)
  require_positives(dataset.subset(design.pairs_split), cohort, f"the {design.pairs_split} split")
  require_positives(dataset.subset(design.eval_split), cohort, f"the {design.eval_split} split")
  base_dir = root / f"base-{base_digest(cfg)[:10]}"
  return Context(cfg, cohort, cohort_dir_of(cfg, root), dataset, vocab, base_dir, design, source)


def source_codes_of(cfg, data_path: Path) -> SourceCodes | None:
  """The source's code spellings saved by the data stage (None for sources that spell codes
  canonically); a data stage finished before they were saved gets them from the source again."""
  if cfg.data.source != "meds":
    return None
  saved = data_path / "source_codes.json"
  if saved.exists():
    return SourceCodes.load(saved)
  return scan_meds(cfg.data.path, cfg.data.bare_code_system or None)


def _user_cohort(cfg, root: Path, dataset: PatientEvents, source, write: bool = True
                 ) -> tuple[Cohort, np.ndarray | None]:
  """A user definition resolved against the data (saved beside the run as `cohort.json` when
  `write`, so the report and a later reader see the exact code set), and for an ACES definition on
  MEDS data the members es-aces finds (None otherwise)."""
  definition = read_definition(cfg.cohort)
  cohort, via_gem = resolve(definition, dataset.codes, source, cfg.cohort)
  record = dict(definition=str(cfg.cohort), cohort=dataclasses.asdict(cohort), acute=cohort.acute)
  by_codes = dataset.patients_with_any(cohort.codes)
  labels = None
  if definition["kind"] == "aces":
    record["aces"] = dict(predicate=definition["predicate"], predicates=definition["predicates"],
                          task=definition["task"])
    if cfg.data.source == "meds":
      labels = aces_members(definition, cfg.data.path, dataset.subject_id)
      differ = int((labels != by_codes).sum())
      record["aces"].update(members=int(labels.sum()), members_by_code_set=int(by_codes.sum()),
                            disagree=differ)
      print(f"[cohort] {cohort.name}: es-aces finds {int(labels.sum()):,} of {dataset.num_patients:,} "
            f"patients; the code set ({len(cohort.codes)} codes) {int(by_codes.sum()):,}"
            + (f" ({differ:,} differ: value bounds, and(...) or codes outside data.include narrow "
               "the labels; training and evaluation use the code set)" if differ else ""), flush=True)
  if definition["map_icd9"]:
    # Who the mapping adds: patients with a mapped ICD-9-CM code and none of the other codes.
    direct = set(cohort.codes) - set(via_gem)
    only = dataset.patients_with_any(via_gem) & ~dataset.patients_with_any(direct)
    record["icd9_gem"] = dict(table=definition["map_icd9"], codes=len(via_gem), mapped=via_gem,
                              patients_only_via_mapping=int(only.sum()))
    print(f"[cohort] {cohort.name}: {int(by_codes.sum()):,} patients; {int(only.sum()):,} only "
          f"through the {len(via_gem)} ICD-9-CM codes the GEM mapping added", flush=True)
  resolved = cohort_dir_of(cfg, root) / "cohort.json"
  if write and (not resolved.exists()
                or json.loads(resolved.read_text()) != json.loads(json.dumps(record, default=str))):
    resolved.parent.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(resolved, record)
  return cohort, labels


def _build_data(cfg, data_run: RunDir) -> None:
  """The data stage: load the configured source, split it, build the vocabulary."""
  dataset, loaded = load_with_report(cfg.data)
  dropped = ", ".join(f"{f} {n:,}" for f, n in loaded["dropped_events"].items())
  print(f"[data] events dropped by data.include ({', '.join(cfg.data.include)}): {dropped}", flush=True)
  splits = loaded["splits"]
  print(f"[data] splits from the {splits['source']}: train/tuning/held_out {splits['patients']} "
        f"patients (fractions {splits['fractions']})", flush=True)
  # The vocabulary is the population's (training split), before the enriched sample joins. The
  # paper's cohort codes are kept from pruning on the simulator, whose story they are; a user's
  # data gets no code it does not hold (a Table-4 code it holds is kept like the simulator's).
  targets = [c for cohort in COHORTS.values() for c in cohort.codes]
  if cfg.data.source != "simulator":
    targets = sorted(set(targets) & set(dataset.codes[np.unique(dataset.code)].tolist()))
  vocab = Vocabulary.build(dataset, min_count=cfg.data.vocab_min_count, always_include=targets,
                           max_size=cfg.data.vocab_max_size or None)
  inclusion, enriched = np.ones(dataset.num_patients), ()
  if cfg.data.source == "simulator" and cfg.data.enrich.patients > 0:
    print(f"[data] enriched sample: {cfg.data.enrich.patients:,} further patients", flush=True)
    pool, pool_inclusion = enrich.draw_pool(simulator_config(cfg.data), cfg.data)
    dataset = concat([dataset, pool])
    inclusion = np.concatenate([inclusion, pool_inclusion])
    enriched = enrich.enriched_cohorts()
  data_run.start()
  enrich.save_design(data_run.path, dataset.subject_id, inclusion, enriched)
  dataset.save_mapped(data_run.path / DATASET)
  vocab.save(data_run.path / "vocab.json")
  if cfg.data.source == "meds":  # the source's spellings, for cohorts and synthetic data
    source = scan_meds(cfg.data.path, cfg.data.bare_code_system or None)
    source.save(data_run.path / "source_codes.json")
    loaded["static_rows"] = dict(source.static_rows)
    print(f"[data] static rows (no time): {source.static_rows['total']:,}; "
          f"{source.static_rows['used_as_sex']:,} give the sex, {source.static_rows['dropped']:,} "
          "are dropped (a static row is no event)", flush=True)
  summary = dict(dataset.summary(), vocab_size=len(vocab))
  print("  " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
  if "value_tokens" in loaded:
    print("[data] value tokens: " + ", ".join(f"{k}={v:,}" for k, v in loaded["value_tokens"].items()))
  io.atomic_write_json(data_run.path / "summary.json", dict(summary, **loaded))
  data_run.finish(patients=dataset.num_patients, events=dataset.num_events, vocab=len(vocab))
