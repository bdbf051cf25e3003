"""The paper's Table 2 on sickle-cell disease: N in {100, 1000, 10000} x P in {0.5, 1.0} with
DPO-Positive, plus SFT at N = 10000, P = 0.5, and the base model once for reference.

  rltf sweep --config=configs/sweeps/table2_ablation.py        # laptop size (~50 min)
  rltf sweep --config=configs/sweeps/table2_ablation.py:smoke  # plumbing check
  rltf sweep --config=configs/sweeps/table2_ablation.py:paper  # batch job

Every row must train on the N and P it names, at SCD's true rarity. N = 10000 at P = 1.0 needs
10,000 SCD patients in the pairs part of the enriched sample: the population stays the default
one (50,000 patients at the paper's prevalences, so the base model is the default run's), and the
enriched sample draws 70 million further patients (SCD 0.036%: ~25,200 of them, all kept, half for
pairs) and keeps 26,000 members of each other rare cohort and 0.05% of everyone else (199,223
kept patients). The whole sweep took 50m41s from a fresh clone on 2 cores (2026-12-02, at
`c6b9fe5`): the data 25.6 minutes with two worker processes (partly beside other work; the
simulator's conditions step has been ~1.5x faster per enrichment chunk since), the base model
6.5, and the eight rows 18.4: 3.7-5.4 minutes for each row at N = 10000 (2,500 steps), about 1 for
the others. Every row is evaluated on the same 4,000 patients (70% of them scored), the rare
sweep's size. The sweep table marks (*) any row whose data still could not give
its N and P, and names two rows that trained on the same pairs.
"""

from rltf_jax.configs import base


def get_config(arg=None):
  cfg = base.get_config(arg, cohort="scd")
  cfg.rltf.calibrate = "none"  # the paper's table: its fine-tunes as they are
  if cfg.size == "default":
    cfg.data.enrich.patients = 70_000_000
    cfg.data.enrich.members_per_cohort = 26_000
    cfg.data.enrich.other_rate = 0.0005
    cfg.data.enrich.pairs_fraction = 0.5
    # The rare sweep's evaluation size, for its power: about 390 SCD positive continuations.
    cfg.eval.num_test_patients = 4_000
    cfg.eval.model_fraction = 0.3
  return cfg


def get_sweep(arg=None):
  # The rows the ablation's claims compare first (each claim pairs N = 10000, P = 0.5 with one
  # other row), so that a sweep stopped part-way has judged as many claims as it can.
  rl = lambda n, p: dict(name=f"rl-n{n}-p{p:g}", overrides={
      "methods": ("rltf",), "rltf.num_pairs": n, "rltf.positive_fraction": p})
  return [dict(name="base", overrides={"methods": ("base",)}), rl(10000, 0.5), rl(100, 0.5),
          dict(name="sft-n10000-p0.5", overrides={
              "methods": ("sft",), "rltf.num_pairs": 10000, "rltf.positive_fraction": 0.5}),
          rl(10000, 1.0), rl(1000, 0.5), rl(1000, 1.0), rl(100, 1.0)]
