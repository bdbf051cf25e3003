"""A synthetic MEDS dataset from a trained generator, with its provenance and a data card.

  rltf synthesize --run runs/simulator-default/scd --method rltf --patients 10000 \\
      --mode patients|continue|enriched [--share 0.5] [--seed 0] --out DIR [--overwrite]

`--run` is a finished cohort directory of `launch.py` (its `config.json` says how it was made).
Modes:
  patients   whole synthetic patients from scratch (the decoder methods: base, rltf, sft);
  continue   real held-out prompts (the evaluation's patients, last T events removed) completed by
             the generator: the paper's mode; drawn in proportion to the design weights, so that a
             cohort-enriched evaluation sample gives prompts as the population has them; the
             prompts are real histories, the data card says so;
  enriched   as `continue`, with `--share` of the prompts taken from the cohort's members, so that
             about that share of the synthetic records belong to the cohort (the card says how many
             do).
Held-out prompts are never patients the method trained on (the evaluation's patients; pairs and
pretraining use other splits). Subject ids are renumbered 1..N.

Several processes (`rltf synthesize --distributed`, or the three process flags of `launch.py`):
every process runs the command in lockstep, the sampler gives each its share of every batch's
rows and gathers them all on every process (`sampling.sampler.sample`), and process 0 alone
writes (the shards, the dataset), the others waiting at a barrier after each write.

Generation runs in shards of `--shard` patients, each saved as it finishes under `DIR.partial/`
with the request it belongs to, so an interrupted command resumes; the MEDS directory appears
only when every shard is done (one atomic rename). An existing DIR is refused unless
`--overwrite`. The dataset's `metadata/dataset.json` holds the provenance (generator, its
checkpoint's run key, config, mode, seed, code version), `README.md` the data card and
`labels/<cohort>.parquet` each synthetic patient's cohort membership in the MEDS label schema.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

import rltf_jax
from rltf_jax import io, methods, pipeline, runs
from rltf_jax.data import enrich, meds
from rltf_jax.data.cohorts import is_definition
from rltf_jax.data.events import PatientEvents, concat
from rltf_jax.errors import ConfigError, DataError, cli_main
from rltf_jax.evaluation import conditional, privacy
from rltf_jax.formatting import fmt, lookup
from rltf_jax.training import finetune
from rltf_jax.training.mesh import sync

MODES = ("patients", "continue", "enriched")
FEW_PATIENTS = 100  # below this many evaluated or membership patients the card says the figures are noisy
log = logging.getLogger(__name__)


def _checkpoint(ctx, method: str) -> Path:
  ckpt = ctx.base_dir if method == "base" else ctx.cohort_dir / method
  if not runs.is_done(ckpt):
    raise ConfigError(f"{ckpt}: method {method!r} has no finished run here; run launch.py with "
                      f"--config.methods including {method!r} first")
  return ckpt


def _prompts(ctx, num: int, share: float | None, seed: int) -> tuple[PatientEvents, dict]:
  """Held-out prompts (the design's evaluation split, long enough, members first at `share`) and
  what the draw achieved: how many prompts come from cohort members, against what was asked."""
  cfg = ctx.cfg.eval
  T, min_prompt = int(cfg.truncate_events), int(cfg.min_prompt_events)
  pool, _ = conditional.sample_patients(ctx.dataset, ctx.design.eval_split, 0, seed, T, min_prompt)
  member = ctx.dataset.select(pool).patients_with_any(ctx.cohort.codes)
  prior = ctx.design.inclusion[pool]
  if share is None:  # as the population: drawn in proportion to the design weights
    w = 1.0 / prior
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), min(num, len(pool)), replace=False,
                                                      p=w / w.sum()))
  else:
    pick, _ = enrich.stratified_sample(prior, member, num, share, seed)
  if len(pick) < num:
    raise DataError(f"only {len(pick)} held-out patients can be prompts ({ctx.design.eval_split} split, "
                    f"at least {T + min_prompt} events); ask for --patients {len(pick)} or fewer")
  achieved = dict(prompts=int(len(pick)), prompts_from_cohort=int(member[pick].sum()),
                  eligible=int(len(pool)), eligible_in_cohort=int(member.sum()))
  if share is not None:
    wanted = int(np.floor(share * num))
    achieved.update(share_requested=float(share), share_achieved=float(member[pick].mean()))
    if achieved["prompts_from_cohort"] < wanted or len(pick) == len(pool):
      why = (f"the {ctx.design.eval_split} split has {int(member.sum())} cohort members among its "
             f"{len(pool)} eligible patients" + (", and every eligible patient is taken, as in "
                                                 "--mode continue" if len(pick) == len(pool) else ""))
      achieved["warning"] = (f"--share {share}: {achieved['prompts_from_cohort']} of {num} prompts "
                             f"({100 * achieved['share_achieved']:.0f}%) come from cohort members, "
                             f"not {wanted}: {why}")
      log.warning("%s", achieved["warning"])
      print(f"[synthesize] warning: {achieved['warning']}", flush=True)
  prompts, _ = conditional.truncate(ctx.dataset.select(pool[pick]), T)
  return prompts, achieved


def synthesize(run_dir: str | Path, method: str, num: int, mode: str, out: str | Path, *,
               share: float = 0.5, seed: int = 0, shard: int = 1000, overwrite: bool = False) -> Path:
  run_dir, out = Path(run_dir), Path(out)
  if mode not in MODES:
    raise ConfigError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
  if num < 1 or shard < 1:
    raise ConfigError(f"--patients and --shard must be positive, got {num} and {shard}")
  if mode == "enriched" and not 0 < share <= 1:
    raise ConfigError(f"--share must be in (0, 1], got {share}")
  if out.exists() and not overwrite:
    raise DataError(f"{out} already exists; choose another --out or pass --overwrite")
  ctx = pipeline.open_run(run_dir)
  methods.get(method)  # unknown names fail with the list of known ones
  ckpt = _checkpoint(ctx, method)
  generator = methods.get(method).generator(ctx, ckpt)
  if mode == "patients" and not hasattr(generator, "generate_patients"):
    raise ConfigError(f"method {method!r} cannot generate whole patients; use --mode continue")
  request = dict(run=str(run_dir.resolve()), method=method, model=runs.finished_key(ckpt), mode=mode,
                 patients=num, share=share if mode == "enriched" else None, seed=seed, shard=shard)
  max_new = int(ctx.cfg.eval.max_new_events)
  prompts, achieved = (None, {}) if mode == "patients" else \
      _prompts(ctx, num, share if mode == "enriched" else None, seed)  # a request the data cannot meet fails here
  partial = _partial_for(out, request, overwrite)
  shards, t0 = [], time.time()
  starts = list(range(0, num, shard))
  for k, start in enumerate(starts):
    path = partial / f"shard-{k:05d}.npz"
    n = min(shard, num - start)
    if not path.exists():
      if mode == "patients":
        part = generator.generate_patients(n, seed + k)
      else:
        rows = prompts.select(np.arange(start, start + n))
        part = conditional.join(rows, generator.complete(rows, max_new_events=max_new, seed=seed + k))
      part.save(path)
      sync(f"synthesize: shard {k}")  # of several processes, process 0 wrote it (rltf_jax.io)
      done = start + n
      eta = (time.time() - t0) / done * (num - done)
      print(f"[synthesize] {done:,} of {num:,} patients ({time.time() - t0:.0f}s, about {eta:.0f}s left)",
            flush=True)
    shards.append(PatientEvents.load(path))
  shards = [_renumber(s, start) for s, start in zip(shards, starts)]
  ds = concat(shards) if len(shards) > 1 else shards[0]
  if prompts is not None:
    achieved["generated_events"] = _generated_counts(ds, prompts)
  card, facts = data_card(ctx, method, ckpt, ds, request, achieved)
  path = out
  if io.writes_files():  # of several processes, process 0 alone writes the dataset
    path = meds.write_meds(ds, out, overwrite=overwrite, splits=False, dataset_name=out.name,
                           metadata=dict(synthetic=True, provenance=dict(
                               request, generator=methods.get(method).LABEL,
                               config=_provenance_config(ctx.cfg), code_version=code_version(),
                               **_source_facts(ctx.cfg), **facts)),
                           files={"README.md": card},
                           labels={ctx.cohort.name: meds.cohort_labels(ds, ctx.cohort.codes)},
                           source=ctx.source)
    shutil.rmtree(partial)
  sync("synthesize: written")
  print(path.resolve(), flush=True)
  return path


def _partial_for(out: Path, request: dict, overwrite: bool) -> Path:
  """`out`.partial, holding this request's finished shards. Another request's folder is replaced
  when it holds no shard (nothing to lose) or with `overwrite`; else it is refused."""
  partial = out.with_name(out.name + ".partial")
  req_path = partial / "request.json"
  other = req_path.exists() and json.loads(req_path.read_text()) != request
  if other and not overwrite and any(partial.glob("shard-*.npz")):
    raise ConfigError(f"{partial} holds shards of another request ({req_path}); delete it or pass "
                      "--overwrite to start over")
  sync("synthesize: partial folder read")  # every process decides before process 0 deletes
  if other and io.writes_files():
    shutil.rmtree(partial)
  partial.mkdir(parents=True, exist_ok=True)
  io.atomic_write_json(req_path, request)
  sync("synthesize: partial folder ready")
  return partial


def _generated_counts(ds: PatientEvents, prompts: PatientEvents) -> dict:
  """Events per record: the prompt's (real) and the generated ones appended to it."""
  generated = ds.lengths - prompts.lengths
  return dict(prompt_mean=float(prompts.lengths.mean()), generated_mean=float(generated.mean()),
              generated_min=int(generated.min()), generated_max=int(generated.max()))


def code_version() -> str:
  """The package version and, in a git checkout, the commit (with `+dirty` for local changes)."""
  import subprocess
  root = Path(__file__).resolve().parent.parent
  try:
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return rltf_jax.__version__
  return f"{rltf_jax.__version__}+{commit[:12]}{'+dirty' if dirty else ''}"


def _provenance_config(cfg) -> dict:
  """The run's config as provenance: the simulator's parameters only when it was the source."""
  config = runs.plain(cfg)
  if cfg.data.source != "simulator":
    config["data"] = {k: v for k, v in config["data"].items() if k != "simulator"}
  return config


def _source_facts(cfg) -> dict:
  """The real data behind the run: its MEDS `dataset.json` name and version, the splits used, and
  a user cohort's definition inline."""
  facts = {}
  if cfg.data.source == "meds":
    meta_path = Path(cfg.data.path) / "metadata" / "dataset.json"
    meta = {}
    if meta_path.exists():
      try:
        meta = json.loads(meta_path.read_text())
      except ValueError:
        meta = {}
    facts["source_dataset"] = dict(path=str(cfg.data.path), name=meta.get("dataset_name"),
                                   version=meta.get("dataset_version"), etl=meta.get("etl_name"),
                                   etl_version=meta.get("etl_version"))
  if is_definition(cfg.cohort) and Path(cfg.cohort).is_file():
    facts["cohort_definition"] = dict(path=str(cfg.cohort), text=Path(cfg.cohort).read_text())
  return facts


def _renumber(ds: PatientEvents, start: int) -> PatientEvents:
  """Synthetic subject ids start + 1.. (a continuation keeps its real patient's id until here),
  all in the test split."""
  return dataclasses.replace(ds, subject_id=np.arange(start + 1, start + ds.num_patients + 1, dtype=np.int64),
                             split=np.full(ds.num_patients, 2, np.int8))


def _cell(cell, digits: int = 3) -> str:
  """'0.412 [0.371, 0.455]' from a metrics cell (value and 95% interval), or 'n/a'."""
  if not isinstance(cell, dict) or cell.get("value") is None:
    return "n/a"
  lo, hi = cell.get("ci95") or [None, None]
  return fmt(cell["value"], digits) + (f" [{fmt(lo, digits)}, {fmt(hi, digits)}]" if lo is not None else "")


def data_card(ctx, method: str, ckpt: Path, ds: PatientEvents, request: dict,
              achieved: dict | None = None) -> tuple[str, dict]:
  """(README.md text, facts for dataset.json): what the dataset is and how it was made, the
  synthetic cohort share beside the real one, what a request achieved against what it asked, and
  the evaluation's privacy and fidelity figures for this generator (with their intervals and a
  caution when they rest on few patients)."""
  cohort, cfg = ctx.cohort, ctx.cfg
  achieved = achieved or {}
  in_cohort = ds.patients_with_any(cohort.codes)
  population = ctx.dataset.subset("train").patients_with_any(cohort.codes)
  facts = dict(cohort=cohort.name, synthetic_in_cohort=int(in_cohort.sum()),
               synthetic_patients=int(ds.num_patients),
               population_cohort_fraction=float(population.mean()) if len(population) else None,
               population_cohort_fraction_of="the real training split",
               real_splits_used=[int((ctx.dataset.split == k).sum()) for k in range(3)], **achieved)
  source = _source_facts(cfg).get("source_dataset")
  m_path = ctx.cohort_dir / "eval" / method / "metrics.json"
  lines = [f"# Synthetic dataset: {cohort.abbrev} ({cohort.disease})", "",
           f"Generated by `{methods.get(method).LABEL}` ({method}) from `{ckpt}` in mode "
           f"`{request['mode']}` (seed {request['seed']}; code {code_version()}); provenance in "
           "`metadata/dataset.json`. MEDS layout (`data/*.parquet`, `metadata/`); subject ids are "
           "synthetic (1..N).", ""]
  if source:
    lines += [f"- Source: MEDS dataset `{source['name']}` version {source['version']} "
              f"(ETL {source['etl']} {source['etl_version']}; `{source['path']}`). Codes are written "
              "in the source's own strings; attributes the source lacks (visits, places of service) "
              "are not written."]
  lines += [f"- Patients: {ds.num_patients:,}; events: {ds.num_events:,}.",
            f"- In the cohort (a target code anywhere in the record): {int(in_cohort.sum()):,} "
            f"({100 * in_cohort.mean():.2f}%); in the real population (its training split): "
            f"{fmt(None if facts['population_cohort_fraction'] is None else 100 * facts['population_cohort_fraction'], 3)}%.",
            "- Labels (`labels/`): one row per patient, `prediction_time` the end of the day of the "
            "record's last event, `boolean_value` whether a target code occurs anywhere in the "
            "record.",
            f"- Real data's splits used by the run (train/tuning/held_out): "
            f"{[int((ctx.dataset.split == k).sum()) for k in range(3)]} patients (the dataset's own "
            "splits when it has them, else `data.split_fractions`; see the data stage's summary.json)."]
  if request["mode"] != "patients":
    gen = achieved.get("generated_events", {})
    lines.append(
        "- **The prompts are real histories** of held-out patients (the evaluation's): each record "
        f"is a real patient's history without its last {cfg.eval.truncate_events} events (mean "
        f"{fmt(gen.get('prompt_mean'), 1)} real events kept), followed by the events the generator "
        f"appended (up to {cfg.eval.max_new_events}; mean {fmt(gen.get('generated_mean'), 1)}, "
        f"{gen.get('generated_min')} to {gen.get('generated_max')}). Treat this dataset as carrying "
        "real patients' data.")
  if request["mode"] == "enriched":
    lines.append(f"- Prompts from cohort members: {achieved.get('prompts_from_cohort')} of "
                 f"{achieved.get('prompts')} ({100 * achieved.get('share_achieved', 0):.0f}%; "
                 f"--share {request['share']} asked).")
    if achieved.get("warning"):
      lines.append(f"- **Warning**: {achieved['warning']}.")
  if is_definition(cfg.cohort) and Path(cfg.cohort).is_file():
    lines += ["", f"The cohort's definition (`{cfg.cohort}`):", "", "```",
              Path(cfg.cohort).read_text().rstrip(), "```"]
  facts["differential_privacy"] = finetune.dp_info(ctx.cohort_dir / method)
  lines += privacy.dp_card_lines(facts["differential_privacy"], request["mode"] != "patients")
  if m_path.exists():
    m = json.loads(m_path.read_text())
    t, mem = m["fidelity"]["target"], m.get("memorization", {})
    get = lookup
    facts["evaluation"] = dict(
        recall=get(t, "recall", "value"), precision=get(t, "precision", "value"),
        rouge1=get(m, "fidelity", "rouge1", "value"),
        auroc_synthetic=get(m, "utility", "synthetic", "auroc", "value"),
        auroc_real=get(m, "utility", "real", "auroc", "value"),
        membership_auc=get(mem, "membership_inference", "value"),
        copies_of_training_continuations=get(mem, "exact_copy_of_train_continuation", "value"),
        evaluated_patients=get(m, "patients", "validation"),
        membership_patients_per_side=int(cfg.eval.num_membership_patients),
        source=str(m_path))
    e = facts["evaluation"]
    lines += ["", f"The evaluation of this generator (`{m_path}`; population-weighted where the "
              f"evaluation sample was enriched; 95% intervals in brackets), on {e['evaluated_patients']} "
              f"evaluated patients and {e['membership_patients_per_side']} membership patients per side:",
              f"- target recall {_cell(get(t, 'recall'))}, precision {_cell(get(t, 'precision'))}; "
              f"ROUGE-1 {_cell(get(m, 'fidelity', 'rouge1'))};",
              f"- CatBoost trained on its synthetic records: AUROC {_cell(get(m, 'utility', 'synthetic', 'auroc'))} "
              f"(on real records: {_cell(get(m, 'utility', 'real', 'auroc'))});",
              f"- membership-inference AUC {_cell(get(mem, 'membership_inference'))} (0.5: training "
              f"patients cannot be told apart); generated continuations equal to a training one: "
              f"{fmt(e['copies_of_training_continuations'], 4)}."]
    small = min(e["evaluated_patients"] or 0, e["membership_patients_per_side"])
    if small < FEW_PATIENTS:
      lines.append(f"- **Caution**: these figures rest on {small} patients or fewer per group; read "
                   "the intervals, not the point values (a membership AUC far from 0.5 on so few "
                   "patients is mostly noise).")
  else:
    lines += ["", f"No evaluation of this generator was found at `{m_path}`."]
  return "\n".join(lines) + "\n", facts


if __name__ == "__main__":  # deprecated: `rltf synthesize`
  from rltf_jax.commands.synthesize import main
  cli_main(main)
