"""Shared base config: every cohort config is this with `cohort` set.

Config arguments, big_vision style (`--config=configs/scd.py:smoke`):
  (none)   default size: the whole pipeline for one cohort on a 2-core laptop CPU;
  smoke    tiny everything, for tests (about a minute end to end);
  paper    the paper's settings (N = 10000 pairs, batch 8, 6 epochs, ...) for a GPU/TPU batch job.
Any field can be overridden on the command line, e.g. `--config.rltf.beta=0.2`.
"""

import ml_collections

from rltf_jax.configs import simulator


def get_config(arg: str | None = None, cohort: str = "scd") -> ml_collections.ConfigDict:
  size = arg or "default"
  if size not in ("default", "smoke", "paper"):
    raise ValueError(f"config argument must be empty, 'smoke' or 'paper', got {arg!r}")
  smoke, paper = size == "smoke", size == "paper"

  cfg = ml_collections.ConfigDict()
  cfg.size = size
  cfg.cohort = cohort
  cfg.workdir = ""  # empty: runs/<data source>-<size>, shared by all cohorts (--workdir overrides)
  cfg.run_name = ""  # sub-directory suffix of this cohort's outputs; sweeps set one per run
  cfg.methods = ("base", "rltf", "sft")  # also "lstm", "halo"

  # ---------------------------------------------------------------- data
  cfg.data = ml_collections.ConfigDict()
  cfg.data.source = "simulator"  # "simulator" | "meds" | "mimic"
  cfg.data.path = ""             # MEDS or MIMIC-IV directory for real data
  cfg.data.bare_code_system = "ICD10CM"  # how prefix-less codes in MEDS are read ("" keeps them as OTHER/)
  # Code families that become events (rltf_jax/data/families.py): any of "diagnoses", "procedures",
  # "medications", "labs", "other". The paper's three by default; the simulator emits only those,
  # so its data is the same with or without the filter.
  cfg.data.include = ("diagnoses", "procedures", "medications")
  # With "labs" included: numeric MEDS rows of labs/other become `<code>//Q<k>of<n>` tokens, n
  # quantile bins per code from the training split (rltf_jax/data/values.py; 0 = bare codes); a
  # code with fewer than value_min_count training values keeps its bare token.
  cfg.data.value_bins = 5
  cfg.data.value_min_count = 20
  cfg.data.num_patients = 2_000 if smoke else (1_000_000 if paper else 50_000)
  cfg.data.seed = 0
  cfg.data.split_fractions = (0.8, 0.1, 0.1)  # train / valid / test, by patient
  cfg.data.split_seed = 0
  cfg.data.vocab_min_count = 1 if smoke else 5
  # The most frequent codes (training split) plus every cohort's target codes; the rest map to
  # <unk>. The paper's vocabulary has 7,954 tokens; the output layer's cost grows with this.
  cfg.data.vocab_max_size = 2_000 if smoke else 8_000
  cfg.data.simulator = simulator.get_config()  # every cohort at its Table-4 frequency
  # Raises every Table-4 cohort of the population to at least this patient prevalence. 0 (default
  # and paper): the paper's frequencies, so a rare cohort is rare where the base model learns (SCD
  # is 18 of 50,000); positives to fine-tune on and to measure come from the enriched sample below.
  # The smoke size keeps a floor so that its 2,000 patients hold positives of every cohort.
  # Applied when the data is drawn (rltf_jax/data/load.py), so an override of it takes effect.
  cfg.data.min_cohort_percent = 5.0 if smoke else 0.0
  # The cohort-enriched sample (rltf_jax/data/enrich.py; simulator only): `patients` further
  # patients from the same population (in draws of num_patients), of whom each rare cohort's
  # members are kept at a rate giving about `members_per_cohort` of them and everyone else at
  # `other_rate`; a hash of the subject id puts `pairs_fraction` of them in the preference pairs'
  # part and the rest in the evaluation's. Every prevalence-dependent number is weighted back to
  # the population. 0 patients: pairs from the training split, evaluation from the test split.
  # Default: 3M patients hold ~1,080 SCD patients (~430 for pairs, ~650 evaluated), drawn in
  # about 1.5 minutes with 2 worker processes.
  cfg.data.enrich = ml_collections.ConfigDict()
  cfg.data.enrich.patients = 0 if smoke else (0 if paper else 3_000_000)
  cfg.data.enrich.members_per_cohort = 2_500
  cfg.data.enrich.other_rate = 0.002
  cfg.data.enrich.pairs_fraction = 0.4
  cfg.data.enrich.workers = 2

  # ---------------------------------------------------------------- baselines (LSTM, HALO)
  # Paper: embedding 128, hidden 256, 3 layers, Adam 1e-3, batch 128, 50 epochs, beam search
  # stopping at EOS or 512 tokens. Default: the same shape, fewer epochs, for a 2-core CPU.
  cfg.lstm = ml_collections.ConfigDict()
  # (The output layer over V ~ 9k-17k codes dominates: the paper size takes ~3 min per epoch on a
  # 1k-patient modelling set on 2 cores, so the default is smaller and takes more, smaller steps.)
  cfg.lstm.embed_dim = 16 if smoke else (128 if paper else 64)
  cfg.lstm.hidden_dim = 32 if smoke else (256 if paper else 128)
  cfg.lstm.num_layers = 2 if smoke else (3 if paper else 2)
  cfg.lstm.learning_rate = 1e-3 if paper else 3e-3
  cfg.lstm.batch_size = 128 if paper else 32
  cfg.lstm.epochs = 1 if smoke else (50 if paper else 4)
  cfg.lstm.max_len = 64 if smoke else (512 if paper else 128)  # training window incl. BOS/EOS
  cfg.lstm.max_new_tokens = 512  # decoding stops at EOS or this many generated tokens
  cfg.lstm.beam_width = 2 if smoke else 4
  cfg.lstm.length_penalty = 0.0  # GNMT alpha for choosing among final beams; 0 = raw log-prob
  cfg.lstm.seed = 0

  # HALO (Theodorou et al. 2023). Paper: the official defaults (12 layers, width 768, 12 heads,
  # 48 visits, Adam 1e-4, batch 48, 50 epochs, full code vocabulary). The code-level head holds
  # two (width + V) x (width + V) masked matrices, so HALO's own vocabulary is capped at the
  # `max_codes` most frequent codes plus the cohort's codes (0 = no cap).
  cfg.halo = ml_collections.ConfigDict()
  cfg.halo.num_layers = 1 if smoke else (12 if paper else 2)
  cfg.halo.width = 32 if smoke else (768 if paper else 128)
  cfg.halo.num_heads = 2 if smoke else (12 if paper else 4)
  cfg.halo.max_visits = 16 if smoke else 48  # n_ctx: start + label visit + patient visits
  cfg.halo.max_codes = 200 if smoke else (0 if paper else 1000)
  cfg.halo.learning_rate = 1e-4 if paper else 1e-3
  cfg.halo.batch_size = 48 if paper else 16
  cfg.halo.epochs = 1 if smoke else (50 if paper else 5)
  cfg.halo.label_mode = "sample"  # completion labels: "sample" (model prior, prompt codes forced) | "prompt"
  cfg.halo.seed = 0

  # ---------------------------------------------------------------- RLTF (DPO-Positive)
  # Paper: N = 10000 pairs, P = 0.5, batch 8, 6 epochs, lr 1e-5, lambda 0.1; beta is not given
  # (0.1, TRL's default). Default size: fewer pairs and a larger learning rate so that one
  # cohort's fine-tune takes a minute or two on a 2-core CPU.
  cfg.rltf = ml_collections.ConfigDict()
  cfg.rltf.num_pairs = 64 if smoke else (10_000 if paper else 1_000)
  cfg.rltf.positive_fraction = 0.5
  cfg.rltf.keep_proportion = True  # too few positives: shrink N to keep P (else keep N, change P)
  cfg.rltf.split_seed = 0          # patients drawn and split points
  cfg.rltf.insert_seed = 1         # negatives' insertion index and inserted code
  cfg.rltf.positive_split = "first"  # positives split before: "first" target (paper) | "any" occurrence
  cfg.rltf.pairs_per_patient = 1     # a patient may give up to this many pairs (paper: 1)
  # Windows (events): the prompt keeps its most recent events, the continuation its first ones;
  # BOS + prompt + continuation + EOS fit the pretraining length (pretrain.seq_len).
  cfg.rltf.max_prompt_events = 15 if smoke else (255 if paper else 63)
  cfg.rltf.max_continuation_events = 15 if smoke else (255 if paper else 63)
  cfg.rltf.beta = 0.1
  cfg.rltf.positive_lambda = 0.1
  cfg.rltf.penalty_placement = "outside"  # "outside" the sigmoid (paper text) | "inside" (Smaug)
  cfg.rltf.batch_size = 8
  cfg.rltf.epochs = 1 if smoke else (6 if paper else 2)
  # Optimiser (rltf_jax/training/optimizer.py): AdamW, warm-up then cosine decay to
  # lr * min_lr_ratio, clipping at clip_norm; b2, weight decay and clipping are TRL's defaults.
  cfg.rltf.lr = 1e-5 if paper else 5e-5
  cfg.rltf.warmup_steps = 0 if paper else 10
  cfg.rltf.min_lr_ratio = 0.1
  cfg.rltf.weight_decay = 0.0
  cfg.rltf.b1 = 0.9
  cfg.rltf.b2 = 0.999
  cfg.rltf.clip_norm = 1.0
  cfg.rltf.reference_batch_size = 32
  cfg.rltf.ckpt_every = 200  # steps; the last step is always saved
  cfg.rltf.log_every = 10
  cfg.rltf.seed = 0          # batch order

  # SFT baseline: the language-model loss (code + attribute NLL, as pretraining) on the chosen
  # sequences (prompt + chosen continuation) of the same pairs, with the same optimiser budget.
  # Each follows its cfg.rltf field, also under an override of that field (`--config.rltf.lr=...`),
  # unless it is overridden itself.
  cfg.sft = ml_collections.ConfigDict()
  for field in ("batch_size", "epochs", "lr", "warmup_steps", "min_lr_ratio", "weight_decay", "b1",
                "b2", "clip_norm", "ckpt_every", "log_every", "seed"):
    cfg.sft[field] = _follows(cfg.rltf, field)
  cfg.sft.aux_weight = 1.0  # weight of the attribute NLL, as pretrain.aux_weight

  # ---------------------------------------------------------------- evaluation (rltf_jax/evaluation)
  # The paper evaluates 100,000 test patients and does not give T; CatBoost's iterations are its
  # library default (1000) at paper size. Patients with fewer than T + min_prompt_events events are
  # skipped. Sampling controls are read by whoever builds the generators (`Generator.complete`
  # takes no sampling arguments).
  cfg.eval = ml_collections.ConfigDict()
  cfg.eval.truncate_events = 5 if smoke else 20  # T: the last T events are regenerated
  cfg.eval.min_prompt_events = 1
  # Generation stops at EOS or here; follows an override of truncate_events.
  cfg.eval.max_new_events = 2 * cfg.eval.get_ref("truncate_events")
  cfg.eval.num_test_patients = 100 if smoke else (100_000 if paper else 2_000)  # 0 = all
  cfg.eval.num_train_patients = 40 if smoke else (10_000 if paper else 500)  # memorization ROUGE
  cfg.eval.num_membership_patients = 50 if smoke else (10_000 if paper else 1_000)  # per side
  cfg.eval.model_fraction = 0.7  # modelling / validation split of the test patients
  # At most this fraction of the evaluated patients are cohort members (all of them when there are
  # fewer); the rest are non-members. Weights (1 / inclusion probability) undo the enrichment.
  cfg.eval.member_fraction = 0.5
  cfg.eval.bootstrap_samples = 100 if smoke else 1_000
  cfg.eval.catboost_iterations = 20 if smoke else (1_000 if paper else 200)
  cfg.eval.catboost_depth = 6
  cfg.eval.catboost_threads = 2
  cfg.eval.temperature = 1.0  # ancestral sampling, as the paper
  cfg.eval.top_k = 0          # 0 = off
  cfg.eval.top_p = 1.0        # 1 = off
  cfg.eval.seed = 0           # patient draw, split, bootstrap and generation seed
  cfg.eval.forecast_samples = 4 if smoke else 8  # K draws per patient (forecast evaluator)
  cfg.eval.evaluators = ("fidelity", "forecast", "utility", "memorization", "prevalence")  # by name

  # ---------------------------------------------------------------- base model (rltf_jax/models/decoder.py)
  # CHIRon-style decoder; see the decoder docstring for the event heads. Default: a model whose
  # pretraining on the 50k-patient simulator takes a few minutes on 2 CPU cores.
  cfg.model = ml_collections.ConfigDict()
  cfg.model.width = 32 if smoke else (768 if paper else 128)
  cfg.model.num_layers = 1 if smoke else (12 if paper else 2)
  # 0: width // 64 (at least 1). The default size uses 4 heads of 32 at width 128 instead of 2 of
  # 64: most of what longer pretraining still gained was on codes already in the patient's history
  # (repeating a chronic diagnosis or drug), which more heads learn sooner. On the same data 2,800
  # steps reach a validation code loss of 4.563 nats against 4.602 with 2 heads, and twice as long
  # gains 0.043 instead of 0.058 (the convergence test: under 0.05), at ~15% more time per
  # step (README, "Convergence of the base model").
  cfg.model.num_heads = 0 if (smoke or paper) else 4
  # Factorised code head (decoder docstring): the `head_codes` most frequent tokens get full output
  # rows, the rest a softmax behind a rank-`tail_rank` projection; 0 = one full head (the paper's
  # shape, kept at :paper and :smoke). At the default size it cuts a step's FLOPs by ~55% and its
  # time by ~35%, which pays for most of the 4x pretraining steps below.
  cfg.model.head_codes = 0 if (smoke or paper) else 1024
  cfg.model.tail_rank = 32
  cfg.model.mlp_ratio = 4
  cfg.model.mlp_activation = "gelu"  # "gelu" (2 matrices) or "swiglu" (3 matrices, Llama-style)
  cfg.model.max_visits = 512       # visit indices beyond this share the last row
  cfg.model.max_age_years = 120
  cfg.model.rope_base = 10_000.0
  cfg.model.norm_eps = 1e-6
  # Operands of the matmuls (rltf_jax/models/precision.py); parameters, residual stream, norms and
  # losses stay float32. float32 and not bfloat16, although bf16 matmuls are ~1.5-2x faster here:
  # over six pretraining seeds on the default SCD run, bf16-pretrained base models reached the same
  # validation loss but RLTF on them generated the rare target worse (F1 0.17 against 0.29, 118
  # predicted positives against 73; see the README).
  cfg.model.compute_dtype = "float32"

  # Pretraining (rltf_jax/training/pretrain.py). Default: 2,800 packed steps of 16 x 128 tokens
  # (~2,000 real targets each, ~5.6M in all, 2.8 epochs of the 50k-patient simulator) at ~0.07
  # s/step (the factorised code head, 4 heads, freed host memory kept: rltf_jax/host_memory.py)
  # take ~3 minutes on a 2-core CPU. On the
  # pre-calibration simulator the old 700 steps with one full head reached a validation code loss
  # of 4.885 nats, 700 factorised ones 4.882 (the factorisation costs nothing there), 2,800
  # factorised ones 4.684 (README, "Model").
  cfg.pretrain = ml_collections.ConfigDict()
  cfg.pretrain.steps = 40 if smoke else (100_000 if paper else 2_800)
  cfg.pretrain.batch_size = 8 if smoke else (64 if paper else 16)
  cfg.pretrain.seq_len = 32 if smoke else (512 if paper else 128)
  # Several patients per row (see the pretrain docstring): a patient takes ~50 of 128 tokens on
  # average (median 36), so an unpacked row is ~60% PAD that the model computes all the same.
  cfg.pretrain.pack = True
  # Optimiser (rltf_jax/training/optimizer.py): AdamW, warm-up then cosine decay to
  # lr * min_lr_ratio, weight decay on matrices only, clipping at clip_norm (0 = off).
  cfg.pretrain.lr = 3e-4 if paper else 3e-3
  cfg.pretrain.warmup_steps = 5 if smoke else (2_000 if paper else 70)
  cfg.pretrain.min_lr_ratio = 0.1
  cfg.pretrain.weight_decay = 0.01
  cfg.pretrain.b1 = 0.9
  cfg.pretrain.b2 = 0.95
  cfg.pretrain.clip_norm = 1.0
  cfg.pretrain.aux_weight = 1.0  # weight of the visit-attribute loss beside the code loss
  cfg.pretrain.eval_every = 20 if smoke else (2_000 if paper else 350)
  cfg.pretrain.ckpt_every = _follows(cfg.pretrain, "eval_every")
  cfg.pretrain.log_every = 10 if smoke else (100 if paper else 20)
  cfg.pretrain.num_valid_patients = 100 if smoke else (5_000 if paper else 500)
  cfg.pretrain.seed = 0

  # Sampling (rltf_jax/sampling): prompt buckets, batch and the longest prompt kept (most recent
  # events). temperature / top_k / top_p of the evaluation are in cfg.eval.
  cfg.sampling = ml_collections.ConfigDict()
  cfg.sampling.batch_size = 16 if smoke else (256 if paper else 64)
  cfg.sampling.max_prompt_len = 32 if smoke else (512 if paper else 128)  # tokens incl. BOS
  cfg.sampling.buckets = (16, 32, 64, 128, 256, 512)

  # Device mesh (rltf_jax/training/mesh.py): batches split over data x fsdp devices; parameters
  # and optimiser state split over `fsdp` as well; `tensor` is reserved for tensor parallelism
  # (the sharding rules already name its dimensions). data 0 = the devices fsdp x tensor leave.
  cfg.mesh = ml_collections.ConfigDict()
  cfg.mesh.data = 1
  cfg.mesh.fsdp = 1
  cfg.mesh.tensor = 1

  return cfg


def _follows(section: ml_collections.ConfigDict, field: str) -> ml_collections.FieldReference:
  """A value that follows `section.field` when that field is overridden later (command line,
  sweep) and becomes independent when it is overridden itself.

  Not a plain `get_ref`: assigning to a field that holds a plain reference sets the referenced
  field too (`--config.sft.lr=...` would change rltf.lr). `ref * 1` is a derived reference, which
  an assignment replaces instead.
  """
  return section.get_ref(field) * 1


# The range of every numeric field, checked before any work starts (`rltf_jax.pipeline`): "int"
# for integers, then a lower bound (">=1", ">0") or an interval ("[0,1]", "(0,1]").
_OPTIMISER = {"lr": ">0", "warmup_steps": "int>=0", "min_lr_ratio": "[0,1]", "weight_decay": ">=0",
              "b1": "[0,1)", "b2": "[0,1)", "clip_norm": ">=0", "batch_size": "int>=1",
              "ckpt_every": "int>=1", "log_every": "int>=1"}
RANGES = {
    "data": {"num_patients": "int>=1", "vocab_min_count": "int>=1", "vocab_max_size": "int>=0",
             "min_cohort_percent": "[0,100]", "value_bins": "int>=0", "value_min_count": "int>=1"},
    "data.enrich": {"patients": "int>=0", "members_per_cohort": "int>=1", "other_rate": "(0,1]",
                    "pairs_fraction": "(0,1)", "workers": "int>=1"},
    "lstm": {"embed_dim": "int>=1", "hidden_dim": "int>=1", "num_layers": "int>=1",
             "learning_rate": ">0", "batch_size": "int>=1", "epochs": "int>=1", "max_len": "int>=3",
             "max_new_tokens": "int>=1", "beam_width": "int>=1", "length_penalty": ">=0"},
    "halo": {"num_layers": "int>=1", "width": "int>=1", "num_heads": "int>=1", "max_visits": "int>=3",
             "max_codes": "int>=0", "learning_rate": ">0", "batch_size": "int>=1", "epochs": "int>=1"},
    "rltf": dict(_OPTIMISER, num_pairs="int>=1", positive_fraction="[0,1]", max_prompt_events="int>=1",
                 max_continuation_events="int>=1", pairs_per_patient="int>=1", beta=">0", positive_lambda=">=0", epochs="int>=1",
                 reference_batch_size="int>=1"),
    "sft": dict(_OPTIMISER, epochs="int>=1", aux_weight=">=0"),
    "eval": {"truncate_events": "int>=1", "min_prompt_events": "int>=0", "max_new_events": "int>=1",
             "num_test_patients": "int>=0", "num_train_patients": "int>=0",
             "num_membership_patients": "int>=0", "model_fraction": "(0,1)", "member_fraction": "(0,1]",
             "bootstrap_samples": "int>=0", "catboost_iterations": "int>=1", "catboost_depth": "int>=1",
             "catboost_threads": "int>=1", "forecast_samples": "int>=1", "temperature": ">0", "top_k": "int>=0", "top_p": "(0,1]"},
    "model": {"width": "int>=1", "num_layers": "int>=1", "num_heads": "int>=0", "mlp_ratio": "int>=1",
              "max_visits": "int>=1", "max_age_years": "int>=1", "rope_base": ">0", "norm_eps": ">0",
              "head_codes": "int>=0", "tail_rank": "int>=1"},
    "pretrain": dict(_OPTIMISER, steps="int>=1", seq_len="int>=4", aux_weight=">=0",
                     eval_every="int>=1", num_valid_patients="int>=0"),
    "sampling": {"batch_size": "int>=1", "max_prompt_len": "int>=2"},
    "mesh": {"data": "int>=0", "fsdp": "int>=1", "tensor": "int>=1"},
}
