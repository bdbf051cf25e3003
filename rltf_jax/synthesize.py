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
import shutil
import time
from pathlib import Path

import numpy as np

import rltf_jax
from rltf_jax import io, methods, pipeline, runs
from rltf_jax.data import enrich, meds
from rltf_jax.data.events import PatientEvents, concat
from rltf_jax.errors import ConfigError, DataError, cli_main
from rltf_jax.evaluation import conditional
from rltf_jax.formatting import fmt, lookup

MODES = ("patients", "continue", "enriched")


def _checkpoint(ctx, method: str) -> Path:
  ckpt = ctx.base_dir if method == "base" else ctx.cohort_dir / method
  if not runs.is_done(ckpt):
    raise ConfigError(f"{ckpt}: method {method!r} has no finished run here; run launch.py with "
                      f"--config.methods including {method!r} first")
  return ckpt


def _prompts(ctx, num: int, share: float | None, seed: int) -> PatientEvents:
  """Held-out prompts: the design's evaluation split, long enough, members first at `share`."""
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
  prompts, _ = conditional.truncate(ctx.dataset.select(pool[pick]), T)
  return prompts


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
  partial = out.with_name(out.name + ".partial")
  partial.mkdir(parents=True, exist_ok=True)
  req_path = partial / "request.json"
  if req_path.exists() and json.loads(req_path.read_text()) != request:
    raise ConfigError(f"{partial} holds shards of another request ({req_path}); delete it to start over")
  io.atomic_write_json(req_path, request)

  max_new = int(ctx.cfg.eval.max_new_events)
  prompts = None if mode == "patients" else _prompts(ctx, num, share if mode == "enriched" else None, seed)
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
      done = start + n
      eta = (time.time() - t0) / done * (num - done)
      print(f"[synthesize] {done:,} of {num:,} patients ({time.time() - t0:.0f}s, about {eta:.0f}s left)",
            flush=True)
    shards.append(PatientEvents.load(path))
  shards = [_renumber(s, start) for s, start in zip(shards, starts)]
  ds = concat(shards) if len(shards) > 1 else shards[0]
  card, facts = data_card(ctx, method, ckpt, ds, request)
  path = meds.write_meds(ds, out, overwrite=overwrite, splits=False, dataset_name=out.name,
                         metadata=dict(synthetic=True, provenance=dict(
                             request, generator=methods.get(method).LABEL,
                             config=runs.plain(ctx.cfg), code_version=rltf_jax.__version__, **facts)),
                         files={"README.md": card},
                         labels={ctx.cohort.name: meds.cohort_labels(ds, ctx.cohort.codes)},
                         source=ctx.source)
  shutil.rmtree(partial)
  print(path.resolve(), flush=True)
  return path


def _renumber(ds: PatientEvents, start: int) -> PatientEvents:
  """Synthetic subject ids start + 1.. (a continuation keeps its real patient's id until here),
  all in the test split."""
  return dataclasses.replace(ds, subject_id=np.arange(start + 1, start + ds.num_patients + 1, dtype=np.int64),
                             split=np.full(ds.num_patients, 2, np.int8))


def data_card(ctx, method: str, ckpt: Path, ds: PatientEvents, request: dict) -> tuple[str, dict]:
  """(README.md text, facts for dataset.json): what the dataset is, the synthetic cohort share
  beside the real one, and the evaluation's privacy and fidelity figures for this generator."""
  cohort = ctx.cohort
  in_cohort = ds.patients_with_any(cohort.codes)
  population = ctx.dataset.subset("train").patients_with_any(cohort.codes)
  facts = dict(cohort=cohort.name, synthetic_in_cohort=int(in_cohort.sum()),
               synthetic_patients=int(ds.num_patients),
               population_cohort_fraction=float(population.mean()) if len(population) else None)
  m_path = ctx.cohort_dir / "eval" / method / "metrics.json"
  lines = [f"# Synthetic dataset: {cohort.abbrev} ({cohort.disease})", "",
           f"Generated by `{methods.get(method).LABEL}` ({method}) from `{ckpt}` in mode "
           f"`{request['mode']}` (seed {request['seed']}); provenance in `metadata/dataset.json`. "
           "MEDS layout (`data/*.parquet`, `metadata/`); subject ids are synthetic (1..N).", "",
           f"- Patients: {ds.num_patients:,}; events: {ds.num_events:,}.",
           f"- In the cohort (a target code anywhere in the record): {int(in_cohort.sum()):,} "
           f"({100 * in_cohort.mean():.2f}%); in the real population (training split): "
           f"{fmt(None if facts['population_cohort_fraction'] is None else 100 * facts['population_cohort_fraction'], 3)}%."]
  if request["mode"] != "patients":
    lines.append("- **The prompts are real histories** of held-out patients (the evaluation's; the "
                 f"last {ctx.cfg.eval.truncate_events} events of each were replaced by generated "
                 "ones): treat this dataset as carrying real patients' data.")
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
        source=str(m_path))
    e = facts["evaluation"]
    lines += ["", f"The evaluation of this generator (`{m_path}`; population-weighted where the "
              "evaluation sample was enriched):",
              f"- target recall {fmt(e['recall'])}, precision {fmt(e['precision'])}; ROUGE-1 {fmt(e['rouge1'], 3)};",
              f"- CatBoost trained on its synthetic records: AUROC {fmt(e['auroc_synthetic'], 3)} "
              f"(on real records: {fmt(e['auroc_real'], 3)});",
              f"- membership-inference AUC {fmt(e['membership_auc'], 3)} (0.5: training patients "
              f"cannot be told apart); generated continuations equal to a training one: "
              f"{fmt(e['copies_of_training_continuations'], 4)}."]
  else:
    lines += ["", f"No evaluation of this generator was found at `{m_path}`."]
  return "\n".join(lines) + "\n", facts


if __name__ == "__main__":  # deprecated: `rltf synthesize`
  from rltf_jax.commands.synthesize import main
  cli_main(main)
