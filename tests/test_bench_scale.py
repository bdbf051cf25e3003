"""`rltf bench scale` at a tiny N: it runs its stages, each in its own process, and prints the
per-stage table (time and peak resident size) and the JSON line with every figure."""

import json
import re

import pytest

from conftest import REPO
from rltf_jax.bench import scale
from rltf_jax.data import meds

ROW = r"^{stage}\s+[\d.]+ s  peak\s+\d+ MiB \(anonymous\s+\d+ MiB\)  .*\b{fact}=\d+"


def run_scale(args, monkeypatch, capsys) -> tuple[str, dict]:
  """(the printed table, the last line's figures) of `rltf bench scale ARGS`; the stages'
  processes import this checkout's code."""
  monkeypatch.chdir(REPO)  # each stage runs as `python -m rltf_jax.bench` from here
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert scale.main(args) == 0
  out = capsys.readouterr().out.strip().splitlines()
  return "\n".join(out[:-1]), json.loads(out[-1])


def test_scale_prints_the_read_and_data_stages_of_a_given_dataset(tmp_path, tiny_dataset, monkeypatch,
                                                                  capsys):
  """Two stages (read, data) of a 3-patient MEDS dataset given with --meds: ~5 s of CPU."""
  meds.write_meds(tiny_dataset, tmp_path / "meds")
  table, figures = run_scale(["--patients", "3", "--meds", str(tmp_path / "meds"), "--stages", "read,data"],
                             monkeypatch, capsys)
  assert re.search(ROW.format(stage="read", fact="events"), table, re.M), table
  assert re.search(ROW.format(stage="data", fact="vocab"), table, re.M), table
  assert "write" not in table and "pretrain" not in table
  assert figures["read_patients"] == figures["data_patients"] == 3
  assert figures["read_events"] == figures["data_events"] == tiny_dataset.num_events == 7
  assert figures["read_peak_rss_mb"] > 0 and figures["data_seconds"] >= 0
  # The heap alone (sampled), beside ru_maxrss: JAX's imports are most of it, and it is part of it.
  assert 50 < figures["read_peak_anon_mb"] <= figures["read_peak_rss_mb"]


@pytest.mark.slow  # the simulator's draw and a compile of the default model's step: ~30 s
def test_scale_writes_a_sharded_draw_and_pretrains_on_it(tmp_path, monkeypatch, capsys):
  """Every stage at N = 200 in shards of 100: the draw is written as 2 shards and read back whole,
  and pretraining runs its step on it. (Smaller shards can fail in the simulator itself:
  `story.simulate(cfg, 25, seed=0)` raises an IndexError, and so does this command's draw of 150
  patients in shards of 50.)"""
  table, figures = run_scale(["--patients", "200", "--chunk-patients", "100", "--steps", "1",
                              "--workdir", str(tmp_path)], monkeypatch, capsys)
  for stage, fact in (("write", "shards"), ("read", "events"), ("data", "vocab"), ("pretrain", "steps")):
    assert re.search(ROW.format(stage=stage, fact=fact), table, re.M), table
  assert figures["write_shards"] == 2 and figures["read_patients"] == figures["pretrain_patients"] == 200
  assert figures["pretrain_steps"] == 1 and figures["read_events"] == figures["data_events"] > 0
