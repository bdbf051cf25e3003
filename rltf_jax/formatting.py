"""Small helpers for text that quotes metrics (reports, data cards, result tables)."""

from __future__ import annotations

import math


def lookup(d: dict, *keys):
  """`d[k1][k2]...`, or None where a key is missing."""
  for k in keys:
    if not isinstance(d, dict) or k not in d:
      return None
    d = d[k]
  return d


def fmt(x, digits: int = 3) -> str:
  """`x` with `digits` decimals; 'n/a' for None and NaN."""
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def num_text(x, digits: int = 3) -> str:
  """`fmt`, except that a nonzero number too small for `digits` decimals keeps two significant
  digits (0.004, not 0.00: a weighted precision of 0.004 is not the no-prediction convention's 0)."""
  if isinstance(x, (int, float)) and not isinstance(x, bool) and 1e-9 < abs(x) < 0.5 * 10 ** -digits:
    return f"{x:.2g}"
  return fmt(x, digits)


def ci_text(cell: dict | None, digits: int = 3) -> str:
  """'0.412 [0.371, 0.455]' from {"value", "ci95"}; 'n/a' without a value."""
  if not cell or cell.get("value") is None:
    return "n/a"
  lo, hi = cell.get("ci95") or [None, None]
  if lo is None or hi is None:
    return num_text(cell["value"], digits)
  return f"{num_text(cell['value'], digits)} [{num_text(lo, digits)}, {num_text(hi, digits)}]"
