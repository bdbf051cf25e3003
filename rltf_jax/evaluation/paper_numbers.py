"""The paper's published numbers (on its private claims data), to print beside ours.

Keys are cohort names of `rltf_jax.data.cohorts` ("sep", "scd", ...) and the paper's method
columns; `PAPER_METHOD` maps our method names onto them (the paper's base model is CHIRon, its RLTF
model is labelled DPO). The paper's Table 1 body did not survive the text extraction; its cells are
the rare-cohort rows of Table 5 and the ROUGE-1 averages below, so Table 5 serves for both.
"""

from __future__ import annotations

from rltf_jax.data.cohorts import get_cohort

# Our method name -> the paper's column name.
PAPER_METHOD = {"base": "CHIRON", "rltf": "DPO", "lstm": "LSTM", "halo": "Halo"}

# Table 5: precision/recall/F1 of generating the target (columns Halo, LSTM, CHIRON, DPO).
_TABLE5 = """
Sep.    0.69/0.11/0.19 0.90/0.06/0.12 0.64/0.23/0.34 0.62/0.35/0.45
SCD     1.00/0.01/0.02 0.00/0.00/0.00 1.00/0.03/0.05 0.50/0.25/0.33
Surg.   0.21/0.02/0.04 0.91/0.02/0.03 0.13/0.07/0.09 0.09/0.24/0.13
DM      0.64/0.15/0.24 0.75/0.14/0.23 0.78/0.24/0.37 0.66/0.57/0.61
Lipid.  0.55/0.09/0.15 0.63/0.07/0.13 0.63/0.20/0.30 0.57/0.36/0.44
Fluid.  0.67/0.03/0.06 0.77/0.03/0.05 0.46/0.04/0.08 0.11/0.19/0.14
AMI     0.74/0.06/0.11 0.81/0.07/0.14 0.72/0.08/0.14 0.44/0.40/0.42
Cond.   0.71/0.05/0.09 0.82/0.04/0.08 0.65/0.12/0.20 0.22/0.29/0.25
Dys.    0.69/0.04/0.08 0.74/0.07/0.13 0.77/0.06/0.11 0.48/0.36/0.41
CVD     0.73/0.02/0.04 0.86/0.03/0.05 0.44/0.04/0.07 0.41/0.24/0.30
Pneu.   0.80/0.07/0.13 0.88/0.06/0.11 0.37/0.21/0.27 0.09/0.26/0.14
Pleu.   0.65/0.04/0.08 0.71/0.03/0.06 0.52/0.05/0.09 0.06/0.18/0.09
Resp.   0.81/0.05/0.09 0.93/0.07/0.12 0.68/0.27/0.38 0.63/0.37/0.47
GI_Hem. 0.72/0.02/0.04 0.77/0.02/0.05 0.67/0.03/0.07 0.18/0.22/0.20
Renal.  0.78/0.06/0.11 0.87/0.07/0.13 0.58/0.20/0.30 0.58/0.29/0.38
Shock   0.82/0.04/0.08 0.90/0.03/0.05 0.62/0.12/0.21 0.52/0.34/0.41
"""

# Table 6: AUROC of CatBoost trained on synthetic data only (columns Real, Halo, LSTM, CHIRON, DPO).
_TABLE6 = """
Sep.    0.963883 0.763294 0.757402 0.950971 0.966863
SCD     0.576595 0.447568 0.472366 0.439055 0.523485
Surg.   0.789956 0.591065 0.583039 0.622276 0.772995
DM      0.954576 0.912782 0.920986 0.936084 0.939164
Lipid.  0.870144 0.786727 0.766577 0.828785 0.834174
Fluid.  0.849671 0.680248 0.689911 0.690835 0.729934
AMI     0.964426 0.743526 0.725831 0.791430 0.952727
Cond.   0.928802 0.828109 0.837644 0.852052 0.896331
Dys.    0.870332 0.734622 0.771347 0.729618 0.854042
CVD     0.952163 0.641987 0.678373 0.607578 0.926226
Pneu.   0.907858 0.772562 0.752410 0.878474 0.835806
Pleu.   0.920464 0.728271 0.726257 0.809138 0.836274
Resp.   0.971665 0.810249 0.796211 0.959314 0.971213
GI_Hem. 0.817911 0.569127 0.605476 0.528093 0.770189
Renal.  0.948784 0.874256 0.864835 0.928585 0.938689
Shock   0.991505 0.896535 0.880568 0.919362 0.980769
"""

# Table 7: AUROC with data augmentation, real + synthetic (columns Real, Halo, LSTM, CHIRON, DPO).
_TABLE7 = """
Sep.    0.963883 0.957284 0.963633 0.964703 0.968165
SCD     0.576595 0.552546 0.577321 0.578732 0.593915
Surg.   0.789956 0.758249 0.769419 0.779733 0.805474
DM      0.954576 0.950263 0.951639 0.951164 0.951946
Lipid.  0.870144 0.861792 0.866152 0.865382 0.866047
Fluid.  0.849671 0.816476 0.828953 0.845331 0.825845
AMI     0.964426 0.951325 0.953470 0.954856 0.969395
Cond.   0.928802 0.920657 0.922438 0.923409 0.923387
Dys.    0.870332 0.857298 0.860837 0.861953 0.869598
CVD     0.952163 0.926174 0.930452 0.942206 0.944967
Pneu.   0.907858 0.882461 0.897954 0.904490 0.878901
Pleu.   0.920464 0.912675 0.920021 0.918651 0.932653
Resp.   0.971665 0.964218 0.968671 0.972935 0.976146
GI_Hem. 0.817911 0.790863 0.792729 0.806536 0.820504
Renal.  0.948784 0.942732 0.946204 0.945539 0.948128
Shock   0.991505 0.987896 0.991323 0.992183 0.991389
"""

# ROUGE-1 between generated and true continuations, averaged over cohorts (Table 1 / text).
ROUGE1_AVERAGE = {"Halo": 0.283, "LSTM": 0.147, "CHIRON": 0.369, "DPO": 0.372}

# Table 3: average ROUGE-1 of conditional generation on RLTF training vs test sequences.
TABLE3 = {"CHIRON": {"train": 0.381, "test": 0.303}, "DPO": {"train": 0.384, "test": 0.311}}

# Table 2 (SCD only): ablation over the number of pairs N and positive proportion P.
TABLE2_SCD = [
    dict(training="RL", n=10000, p=0.5, f1=0.41, auroc=0.61, rouge1=0.372),
    dict(training="RL", n=1000, p=0.5, f1=0.01, auroc=0.57, rouge1=0.318),
    dict(training="RL", n=100, p=0.5, f1=0.39, auroc=0.73, rouge1=0.396),
    dict(training="RL", n=10000, p=1.0, f1=0.15, auroc=0.54, rouge1=0.362),
    dict(training="SFT", n=10000, p=0.5, f1=0.05, auroc=0.58, rouge1=0.327),
]


def _parse(text: str, columns: tuple[str, ...], cell=float) -> dict[str, dict[str, object]]:
  table = {}
  for line in text.strip().splitlines():
    abbrev, *cells = line.split()
    if len(cells) != len(columns):
      raise ValueError(f"paper table row {line!r} has {len(cells)} cells for {len(columns)} columns")
    table[get_cohort(abbrev.replace("_", " ")).name] = dict(zip(columns, map(cell, cells)))
  return table


TABLE5: dict[str, dict[str, tuple[float, float, float]]] = _parse(
    _TABLE5, ("Halo", "LSTM", "CHIRON", "DPO"), lambda s: tuple(float(v) for v in s.split("/")))
TABLE6: dict[str, dict[str, float]] = _parse(_TABLE6, ("Real", "Halo", "LSTM", "CHIRON", "DPO"))
TABLE7: dict[str, dict[str, float]] = _parse(_TABLE7, ("Real", "Halo", "LSTM", "CHIRON", "DPO"))


def paper_column(method: str) -> str | None:
  """The paper's column for our method name (None for methods the paper's tables lack, e.g. sft)."""
  return "Real" if method == "real" else PAPER_METHOD.get(method)


def prf(cohort: str, method: str) -> tuple[float, float, float] | None:
  """Table 5's precision/recall/F1 for our cohort and method names, or None."""
  col = paper_column(method)
  return TABLE5.get(cohort, {}).get(col) if col else None


def format_prf(cell: tuple[float, float, float]) -> str:
  """"P/R/F1" with two decimals, as the paper prints them."""
  return "/".join(f"{v:.2f}" for v in cell)


def auroc(table: dict[str, dict[str, float]], cohort: str, method: str) -> float | None:
  """AUROC from TABLE6 or TABLE7 for our cohort and method names ("real" too), or None."""
  col = paper_column(method)
  return table.get(cohort, {}).get(col) if col else None


def table2_row(training: str, n: int, p: float) -> dict | None:
  """Table 2's SCD row for training "RL" or "SFT" with N pairs and positive fraction P, or None."""
  return next((r for r in TABLE2_SCD if (r["training"], r["n"], r["p"]) == (training, n, p)), None)
