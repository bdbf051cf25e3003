"""The training loop's own pieces: metrics lines of a resumed run, checkpoints saved again."""

import json

import numpy as np

from rltf_jax.checkpoints import Checkpointer
from rltf_jax.training.loop import MetricsWriter


def test_a_resumed_run_keeps_each_metrics_step_once(tmp_path):
  w = MetricsWriter(tmp_path / "metrics.jsonl")
  for step in range(1, 11):
    w.write(dict(step=step, loss=1.0 / step))
  w.truncate_after(6)  # the checkpoint a resumed run starts from is step 6
  for step in range(7, 11):
    w.write(dict(step=step, loss=1.0 / step))
  steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 11))


def test_saving_a_step_again_replaces_it(tmp_path):
  ckpt = Checkpointer(tmp_path)
  ckpt.save_best(5, dict(w=np.zeros(3, np.float32)), {})
  ckpt.save_best(5, dict(w=np.ones(3, np.float32)), {})  # raised StepAlreadyExistsError before
  got = ckpt.restore_params(dict(w=np.zeros(3, np.float32)))
  ckpt.close()
  np.testing.assert_array_equal(got["w"], np.ones(3, np.float32))
