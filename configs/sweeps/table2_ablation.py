"""The paper's Table 2 on sickle-cell disease: N in {100, 1000, 10000} x P in {0.5, 1.0} with
DPO-Positive, plus SFT at N = 10000, P = 0.5, and the base model once for reference.

  python -m rltf_jax.sweep --config=configs/sweeps/table2_ablation.py        # laptop size
  python -m rltf_jax.sweep --config=configs/sweeps/table2_ablation.py:paper  # batch job

Every row must train on the N and P it names, so the laptop size draws enough SCD patients for
N = 10000 at P = 1.0: 250,000 simulated patients with SCD raised to 6% gives 200,000 training
patients, 12,000 of them positive (the simulator draws each cohort at exactly its prevalence).
That is far from SCD's true rarity (0.036%); the sweep table marks (*) any row whose data still
could not give its N and P, and names two rows that trained on the same pairs.
"""

from configs import base


def get_config(arg=None):
  cfg = base.get_config(arg, cohort="scd")
  if cfg.size == "default":
    cfg.data.num_patients = 250_000
    cfg.data.min_cohort_percent = 6.0
  return cfg


def get_sweep(arg=None):
  runs = [dict(name="base", overrides={"methods": ("base",)})]
  for n in (100, 1000, 10000):
    for p in (0.5, 1.0):
      runs.append(dict(name=f"rl-n{n}-p{p:g}", overrides={
          "methods": ("rltf",), "rltf.num_pairs": n, "rltf.positive_fraction": p}))
  runs.append(dict(name="sft-n10000-p0.5", overrides={
      "methods": ("sft",), "rltf.num_pairs": 10000, "rltf.positive_fraction": 0.5}))
  return runs
