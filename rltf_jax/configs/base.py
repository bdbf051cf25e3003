"""Shared base config: every cohort config is this with `cohort` set.

Config arguments, big_vision style (`--config=configs/scd.py:smoke`):
  (none)   default size: the whole pipeline for one cohort on a 2-core laptop CPU;
  smoke    tiny everything, for tests (about a minute end to end);
  paper    the paper's settings (N = 10000 pairs, batch 8, 6 epochs, ...) for a GPU/TPU batch job.
Any field can be overridden on the command line, e.g. `--config.rltf.beta=0.2`.

Each field is declared once with its default and, for a number, its range (`"int>=1"`, `"[0,1]"`,
`"(0,1]"`, `">0"`), which `pipeline.check_ranges` enforces before any work (`RANGES`). Why a
default is what it is, with the measurements behind it: docs/config.md.
"""

import ml_collections

from rltf_jax.configs import simulator

SIZES = ("default", "smoke", "paper")


def get_config(arg: str | None = None, cohort: str = "scd") -> ml_collections.ConfigDict:
  return _build(arg, cohort)[0]


def _build(arg: str | None, cohort: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(the config, {section: {field: range}}) of size `arg`."""
  size = arg or "default"
  if size not in SIZES:
    raise ValueError(f"config argument must be empty, 'smoke' or 'paper', got {arg!r}")
  smoke, paper = size == "smoke", size == "paper"
  ranges: dict[str, dict[str, str]] = {}

  cfg = ml_collections.ConfigDict()
  cfg.size = size
  cfg.cohort = cohort
  cfg.workdir = ""   # empty: runs/<data source>-<size>, shared by all cohorts (--workdir overrides)
  cfg.run_name = ""  # suffix of this cohort's output directory; sweeps set one per run
  cfg.methods = ("base", "rltf", "sft")  # also "lstm", "halo"
  # A cohort more prevalent than this (percent of the training split) is warned about: the method
  # is for rare conditions (the paper's rare cohorts are below 1%). Keys no stage's outputs.
  cfg.rare_warn_percent = 5.0

  # ---------------------------------------------------------------- data (rltf_jax/data)
  f = _Section(cfg, "data", ranges)
  f("source", "simulator")            # "simulator" | "meds" | "mimic"
  f("path", "")                       # MEDS or MIMIC-IV directory for real data
  f("bare_code_system", "ICD10CM")    # how prefix-less MEDS codes are read ("": OTHER/)
  f("include", ("diagnoses", "procedures", "medications"))  # code families that become events
  f("value_bins", 5, "int>=0")        # quantile bins of a numeric lab/other value (0: bare codes)
  f("value_min_count", 20, "int>=1")  # training values a code needs to be binned
  f("num_patients", 2_000 if smoke else (1_000_000 if paper else 50_000), "int>=1")  # population
  f("seed", 0)
  f("split_fractions", (0.8, 0.1, 0.1))  # train / valid / test, by patient
  f("split_seed", 0)
  f("vocab_min_count", 1 if smoke else 5, "int>=1")  # training occurrences a code needs
  f("vocab_max_size", 2_000 if smoke else 8_000, "int>=0")  # most frequent codes + targets (0: all)
  f("simulator", simulator.get_config())  # every cohort at its Table-4 frequency
  f("min_cohort_percent", 5.0 if smoke else 0.0, "[0,100]")  # floor of every cohort's prevalence

  # The cohort-enriched sample (rltf_jax/data/enrich.py; simulator only; 0 patients: none).
  f = _Section(cfg, "data.enrich", ranges)
  f("patients", 0 if (smoke or paper) else 3_000_000, "int>=0")  # further patients screened
  f("members_per_cohort", 2_500, "int>=1")  # about this many of each rare cohort's members kept
  f("other_rate", 0.002, "(0,1]")           # share of everyone else kept
  f("pairs_fraction", 0.4, "(0,1)")         # share of the kept patients for preference pairs
  f("workers", 2, "int>=1")                 # processes drawing the sample

  # ---------------------------------------------------------------- LSTM baseline
  f = _Section(cfg, "lstm", ranges)
  f("embed_dim", 16 if smoke else (128 if paper else 64), "int>=1")
  f("hidden_dim", 32 if smoke else (256 if paper else 128), "int>=1")
  f("num_layers", 2 if smoke else (3 if paper else 2), "int>=1")
  f("learning_rate", 1e-3 if paper else 3e-3, ">0")
  f("batch_size", 128 if paper else 32, "int>=1")
  f("epochs", 1 if smoke else (50 if paper else 4), "int>=1")
  f("max_len", 64 if smoke else (512 if paper else 128), "int>=3")  # training window incl. BOS/EOS
  f("max_new_tokens", 512, "int>=1")  # decoding stops at EOS or here
  f("beam_width", 2 if smoke else 4, "int>=1")
  f("length_penalty", 0.0, ">=0")     # GNMT alpha among final beams; 0 = raw log-prob
  f("seed", 0)

  # ---------------------------------------------------------------- HALO baseline
  f = _Section(cfg, "halo", ranges)
  f("num_layers", 1 if smoke else (12 if paper else 2), "int>=1")
  f("width", 32 if smoke else (768 if paper else 128), "int>=1")
  f("num_heads", 2 if smoke else (12 if paper else 4), "int>=1")
  f("max_visits", 16 if smoke else 48, "int>=3")  # n_ctx: start + label visit + patient visits
  f("max_codes", 200 if smoke else (0 if paper else 1000), "int>=0")  # own vocabulary cap (0: none)
  f("learning_rate", 1e-4 if paper else 1e-3, ">0")
  f("batch_size", 48 if paper else 16, "int>=1")
  f("epochs", 1 if smoke else (50 if paper else 5), "int>=1")
  f("label_mode", "sample")  # completion labels: "sample" (model prior, prompt forced) | "prompt"
  f("seed", 0)

  # ---------------------------------------------------------------- RLTF (DPO-Positive)
  f = _Section(cfg, "rltf", ranges)
  f("num_pairs", 64 if smoke else (10_000 if paper else 1_000), "int>=1")  # N
  f("positive_fraction", 0.5, "[0,1]")  # P
  f("keep_proportion", True)  # too few positives: shrink N to keep P (else keep N, change P)
  f("split_seed", 0)          # patients drawn and split points
  f("insert_seed", 1)         # negatives' insertion index and inserted code
  f("positive_split", "first")  # positives split before the "first" target (paper) | "any"
  f("pairs_per_patient", 1, "int>=1")  # pairs one patient may give (paper: 1)
  f("calibrate", "none" if paper else "stratum")  # target logit bias per stratum ("none": paper)
  f("max_prompt_events", 15 if smoke else (255 if paper else 63), "int>=1")  # most recent kept
  f("max_continuation_events", 15 if smoke else (255 if paper else 63), "int>=1")  # first kept
  f("beta", 0.1, ">0")
  f("positive_lambda", 0.1, ">=0")
  f("penalty_placement", "outside")  # "outside" the sigmoid (paper text) | "inside" (Smaug)
  _optimiser(f, batch_size=8, epochs=1 if smoke else (6 if paper else 1),
             lr=1e-5 if paper else 5e-5, warmup_steps=0 if paper else 10, min_lr_ratio=0.1,
             weight_decay=0.0, b1=0.9, b2=0.999, clip_norm=1.0)
  f("reference_batch_size", 32, "int>=1")
  _optimiser(f, ckpt_every=200, log_every=10)  # steps; the last step is always saved
  f("seed", 0)  # batch order
  # Differentially private fine-tuning (DP-SGD over the pairs' patients; docs/privacy.md).
  f = _Section(cfg, "rltf.dp", ranges)
  f("epsilon", 0.0, ">=0")    # target epsilon; 0 = off (ordinary training)
  f("delta", 1e-5, "(0,1)")   # must be below 1 / num_pairs
  f("clip_norm", 1.0, ">0")   # L2 bound of each pair's gradient
  f("seed", 0, "int>=0")      # noise

  # ---------------------------------------------------------------- SFT baseline
  # Each optimiser field follows its cfg.rltf field (also under an override of that field) unless
  # it is overridden itself: the same pairs, the same budget.
  f = _Section(cfg, "sft", ranges)
  for field in ("batch_size", "epochs", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "b1",
                "b2", "clip_norm", "ckpt_every", "log_every", "seed"):
    f(field, _follows(cfg.rltf, field), ranges["rltf"].get(field))
  f("aux_weight", 1.0, ">=0")  # weight of the attribute NLL, as pretrain.aux_weight
  f("calibrate", "none")  # as rltf.calibrate
  f = _Section(cfg, "sft.dp", ranges)  # follows cfg.rltf.dp: the same patients
  for field in ("epsilon", "delta", "clip_norm", "seed"):
    f(field, _follows(cfg.rltf.dp, field), ranges["rltf.dp"][field])

  # ---------------------------------------------------------------- evaluation (rltf_jax/evaluation)
  f = _Section(cfg, "eval", ranges)
  f("truncate_events", 5 if smoke else 20, "int>=1")  # T: the last T events are regenerated
  f("min_prompt_events", 1, "int>=0")  # patients need T + this many events
  f("max_new_events", 2 * cfg.eval.get_ref("truncate_events"), "int>=1")  # follows T
  f("num_test_patients", 100 if smoke else (100_000 if paper else 2_000), "int>=0")  # 0 = all
  f("num_train_patients", 40 if smoke else (10_000 if paper else 500), "int>=0")  # memorization
  f("num_membership_patients", 50 if smoke else (10_000 if paper else 1_000), "int>=0")  # per side
  f("model_fraction", 0.7, "(0,1)")   # modelling / validation split of the evaluated patients
  f("member_fraction", 0.5, "(0,1]")  # at most this share of them are cohort members
  f("bootstrap_samples", 100 if smoke else 1_000, "int>=0")
  f("catboost_iterations", 20 if smoke else (1_000 if paper else 200), "int>=1")
  f("catboost_depth", 6, "int>=1")
  f("catboost_threads", 2, "int>=1")
  f("forecast_samples", 4 if smoke else 8, "int>=1")  # K draws per patient (forecast evaluator)
  f("evaluators", ("fidelity", "forecast", "utility", "memorization", "prevalence"))  # by name
  f("temperature", 1.0, ">0")  # ancestral sampling, as the paper
  f("top_k", 0, "int>=0")      # 0 = off
  f("top_p", 1.0, "(0,1]")     # 1 = off
  f("seed", 0)                 # patient draw, split, bootstrap and generation

  # ---------------------------------------------------------------- stratum calibration (evaluation/calibration.py)
  f = _Section(cfg, "calibration", ranges)  # of every method with calibrate = "stratum"
  f("patients", 200 if smoke else 4_000, "int>=1")  # tuning patients (none of them validation ones)
  f("samples", 2, "int>=1")  # masked draws per tuning patient

  # ---------------------------------------------------------------- base model (rltf_jax/models/decoder.py)
  f = _Section(cfg, "model", ranges)
  f("width", 32 if smoke else (768 if paper else 128), "int>=1")
  f("num_layers", 1 if smoke else (12 if paper else 2), "int>=1")
  f("num_heads", 0 if (smoke or paper) else 4, "int>=0")  # 0: width // 64 (at least 1)
  f("head_codes", 0 if (smoke or paper) else 1024, "int>=0")  # full output rows (0: one full head)
  f("tail_rank", 32, "int>=1")  # rank of the factorised head's rare-code projection
  f("mlp_ratio", 4, "int>=1")
  f("mlp_activation", "gelu")   # "gelu" (2 matrices) | "swiglu" (3, Llama-style)
  f("max_visits", 512, "int>=1")  # visit indices beyond this share the last row
  f("max_age_years", 120, "int>=1")
  f("rope_base", 10_000.0, ">0")
  f("norm_eps", 1e-6, ">0")
  f("compute_dtype", "float32")  # matmul operands (rltf_jax/models/precision.py): float32 | bfloat16

  # ---------------------------------------------------------------- pretraining (rltf_jax/training/pretrain.py)
  f = _Section(cfg, "pretrain", ranges)
  f("steps", 40 if smoke else (100_000 if paper else 2_800), "int>=1")
  f("batch_size", 8 if smoke else (64 if paper else 16), "int>=1")
  f("seq_len", 32 if smoke else (512 if paper else 128), "int>=4")
  f("pack", True)  # several patients per row
  _optimiser(f, lr=3e-4 if paper else 3e-3, warmup_steps=5 if smoke else (2_000 if paper else 70),
             min_lr_ratio=0.1, weight_decay=0.01, b1=0.9, b2=0.95, clip_norm=1.0)
  f("aux_weight", 1.0, ">=0")  # weight of the visit-attribute loss beside the code loss
  f("eval_every", 20 if smoke else (2_000 if paper else 350), "int>=1")
  f("ckpt_every", _follows(cfg.pretrain, "eval_every"), "int>=1")
  f("log_every", 10 if smoke else (100 if paper else 20), "int>=1")
  f("num_valid_patients", 100 if smoke else (5_000 if paper else 500), "int>=0")
  f("seed", 0)

  # ---------------------------------------------------------------- sampling (rltf_jax/sampling)
  f = _Section(cfg, "sampling", ranges)  # temperature, top_k and top_p are cfg.eval's
  f("batch_size", 16 if smoke else (256 if paper else 64), "int>=1")
  f("max_prompt_len", 32 if smoke else (512 if paper else 128), "int>=2")  # tokens incl. BOS
  f("buckets", (16, 32, 64, 128, 256, 512))  # prompt lengths compiled for

  # ---------------------------------------------------------------- device mesh (rltf_jax/training/mesh.py)
  f = _Section(cfg, "mesh", ranges)
  f("data", 1, "int>=0")    # 0: the devices fsdp x tensor leave
  f("fsdp", 1, "int>=1")    # parameters and optimiser state split too
  f("tensor", 1, "int>=1")  # reserved for tensor parallelism

  return cfg, ranges


class _Section:
  """Declares one section's fields: `f(name, default, range)` sets `cfg.<section>.<name>` and
  records its range, if any, for `pipeline.check_ranges`."""

  def __init__(self, cfg: ml_collections.ConfigDict, name: str, ranges: dict):
    *parents, leaf = name.split(".")
    for part in parents:
      cfg = cfg[part]
    cfg[leaf] = ml_collections.ConfigDict()
    self.node, self.name, self.ranges = cfg[leaf], name, ranges

  def __call__(self, field: str, value, check: str | None = None) -> None:
    self.node[field] = value
    if check is not None:
      self.ranges.setdefault(self.name, {})[field] = check


_OPTIMISER_RANGES = {"lr": ">0", "warmup_steps": "int>=0", "min_lr_ratio": "[0,1]",
                     "weight_decay": ">=0", "b1": "[0,1)", "b2": "[0,1)", "clip_norm": ">=0",
                     "batch_size": "int>=1", "epochs": "int>=1", "ckpt_every": "int>=1",
                     "log_every": "int>=1"}


def _optimiser(f: _Section, **values) -> None:
  """AdamW with warm-up then cosine decay to lr * min_lr_ratio, clipping at clip_norm
  (rltf_jax/training/optimizer.py), plus the loop's batch and checkpoint fields."""
  for field, value in values.items():
    f(field, value, _OPTIMISER_RANGES[field])


def _follows(section: ml_collections.ConfigDict, field: str) -> ml_collections.FieldReference:
  """A value that follows `section.field` when that field is overridden later (command line,
  sweep) and becomes independent when it is overridden itself.

  Not a plain `get_ref`: assigning to a field that holds a plain reference sets the referenced
  field too (`--config.sft.lr=...` would change rltf.lr). `ref * 1` is a derived reference, which
  an assignment replaces instead.
  """
  return section.get_ref(field) * 1


# The range of every numeric field, {section: {field: range}}, as declared above (the same at
# every size): checked before any work starts (`rltf_jax.pipeline.check_ranges`).
RANGES = _build(None, "scd")[1]
