"""How much fine-tuning does RLTF need at true rarity? SCD with the default budget (2 epochs of
the ~840 achievable pairs at lr 5e-5) against a 5x learning rate and 5x lr with 6 epochs (the
paper's epoch count; its N is 10,000 pairs at lr 1e-5 on a far larger model).

  rltf sweep --config=configs/sweeps/rltf_budget.py [--workdir=DIR]
"""

from rltf_jax.configs import base


def get_config(arg=None):
  cfg = base.get_config(arg, cohort="scd")
  cfg.methods = ("base", "rltf")
  return cfg


def get_sweep(arg=None):
  return [dict(name="lr2.5e-4", overrides={"rltf.lr": 2.5e-4}),
          dict(name="lr2.5e-4-ep6", overrides={"rltf.lr": 2.5e-4, "rltf.epochs": 6})]
