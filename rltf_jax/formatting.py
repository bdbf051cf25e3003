"""Two small helpers for text that quotes metrics (reports, data cards)."""

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
