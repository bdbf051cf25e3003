"""The faithful-rarity goal's check (rltf_jax.reporting.rarity) on hand-made evaluations."""

import json

import pytest

from rltf_jax.reporting import rarity


def _num(v, lo=None, hi=None):
  return dict(value=v, ci95=[v if lo is None else lo, v if hi is None else hi])


def _metrics(cal, auroc, rouge, syn, positives=(154, 7, 147), anchors=None):
  strata = {s: dict(calibration=_num(c), auroc=_num(auroc), positives=p)
            for s, c, p in zip(("all", "new_onset", "repeat"), cal, positives)}
  return dict(cohort="scd", cohort_acute=False, forecast=dict(strata=strata, anchors=anchors or {}),
              fidelity=dict(rouge1=_num(rouge)), utility=dict(synthetic=dict(auroc=_num(syn))))


def _write(tmp_path, name, base, method):
  run = tmp_path / name
  for m, rec in (("base", base), ("rltf", method)):
    (run / "eval" / m).mkdir(parents=True)
    (run / "eval" / m / "metrics.json").write_text(json.dumps(rec))
  return run


def test_goal_verdicts(tmp_path):
  anchors = dict(logit_bias=dict(all=dict(auroc=_num(0.95))), ceiling=dict(all=dict(auroc=_num(0.99))))
  base = _metrics((0.1, 3.0, 0.01), 0.95, 0.204, 0.988, anchors=anchors)
  good = _write(tmp_path, "good", base, _metrics((1.1, 9.0, 0.9), 0.96, 0.198, 0.985))
  c = rarity.check(good)
  # New onset holds 7 positives (< 30): not judged; all and repeat are in range.
  assert c["calibration_judged"] == ["all", "repeat"] and c["calibration_met"]
  assert c["discrimination_met"] and c["rouge1_met"] and c["synthetic_met"]
  bad = _write(tmp_path, "bad", base, _metrics((1.3, 1.0, 1.0), 0.93, 0.19, 0.97))
  c = rarity.check(bad)
  assert not c["calibration_met"]  # 1.3 overall
  assert not c["discrimination_met"]  # below the logit-bias anchor and 0.06 under the ceiling
  assert not c["rouge1_met"] and not c["synthetic_met"]  # 0.014 and 0.018 below the base model
  assert "not met" in rarity.table([c])


def test_missing_evaluation_is_a_clear_error(tmp_path):
  from rltf_jax.errors import DataError
  with pytest.raises(DataError, match="evaluate 'rltf'"):
    rarity.check(tmp_path)


def test_stratum_bias_anchor_and_per_cohort_summary(tmp_path):
  anchors = dict(logit_bias=dict(all=dict(auroc=_num(0.95))), ceiling=dict(all=dict(auroc=_num(0.99))),
                 stratum_bias=dict(all=dict(calibration=_num(1.4, 1.1, 2.0))))
  base = _metrics((0.1, 3.0, 0.01), 0.95, 0.204, 0.988, anchors=anchors)
  runs = [_write(tmp_path, "scd-rare", base, _metrics((1.1, 9.0, 0.9), 0.96, 0.198, 0.985)),
          _write(tmp_path, "scd-rare-s1", base, _metrics((1.3, 1.0, 1.0), 0.96, 0.198, 0.985))]
  checks = [rarity.check(r) for r in runs]
  assert checks[0]["calibration_stratum_bias"]["value"] == 1.4
  assert "1.40 [1.10, 2.00]" in rarity.table(checks)
  row = rarity.summary(checks).splitlines()[2]
  # Calibration met in the first run only (1.3 overall in the second); the rest in both.
  assert row.startswith("| scd-rare | SCD | 2 | 1 of 2 | 2 of 2 | 2 of 2 | 1 of 2 | 1.10, 1.30 |"), row


def test_results_block_by_name(tmp_path):
  anchors = dict(logit_bias=dict(all=dict(auroc=_num(0.95))), ceiling=dict(all=dict(auroc=_num(0.99))))
  base = _metrics((0.1, 3.0, 0.01), 0.95, 0.204, 0.988, anchors=anchors)
  run = _write(tmp_path, "scd-rare", base, _metrics((1.1, 9.0, 0.9), 0.96, 0.198, 0.985))
  results = tmp_path / "RESULTS.md"
  results.write_text("a\n<!-- rarity:start -->\nold ablation\n<!-- rarity:end -->\n"
                     "<!-- rarity-sweep:start -->\n<!-- rarity-sweep:end -->\n")
  assert rarity.main([str(run), "--results", str(results), "--block", "sweep"]) == 0
  text = results.read_text()
  assert "old ablation" in text and "--block sweep" in text and "| scd-rare | SCD |" in text
