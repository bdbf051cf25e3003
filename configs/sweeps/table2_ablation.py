"""The paper's Table 2 on sickle-cell disease: N in {100, 1000, 10000} x P in {0.5, 1.0} with
DPO-Positive, plus SFT at N = 10000, P = 0.5, and the base model once for reference.

  python -m rltf_jax.sweep --config=configs/sweeps/table2_ablation.py        # laptop size
  python -m rltf_jax.sweep --config=configs/sweeps/table2_ablation.py:paper  # batch job

When the data holds fewer positives than N * P, the pair builder uses what there is and logs a
warning (see `rltf.keep_proportion`), so at laptop size the large-N rows are capped by the data.
"""

from configs import base


def get_config(arg=None):
  return base.get_config(arg, cohort="scd")


def get_sweep(arg=None):
  runs = [dict(name="base", overrides={"methods": ("base",)})]
  for n in (100, 1000, 10000):
    for p in (0.5, 1.0):
      runs.append(dict(name=f"rl-n{n}-p{p:g}", overrides={
          "methods": ("rltf",), "rltf.num_pairs": n, "rltf.positive_fraction": p}))
  runs.append(dict(name="sft-n10000-p0.5", overrides={
      "methods": ("sft",), "rltf.num_pairs": 10000, "rltf.positive_fraction": 0.5}))
  return runs
