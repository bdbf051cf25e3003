"""The training loop's own pieces: metrics lines of a resumed run, checkpoints saved again, asynchronous
saves beside a donated state."""

import json

import jax
import jax.numpy as jnp
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


def test_an_asynchronous_save_is_not_overwritten_by_the_donated_next_step(tmp_path):
  # The trainers save asynchronously and then donate the saved state to the next step: orbax must
  # have copied the arrays to host before `save` returned, or the checkpoint holds the next step.
  step = jax.jit(lambda s: jax.tree.map(lambda x: x * 0 - 7.0, s), donate_argnums=0)
  state = dict(params=dict(w=jnp.arange(200_000, dtype=jnp.float32)), opt_state=jnp.ones((300, 300)))
  want = jax.tree.map(np.array, state)
  ckpt = Checkpointer(tmp_path, asynchronous=True)
  ckpt.save_latest(1, state, {})
  # Donated when the host copy is a copy (GPU, TPU); on CPU it can be a view of the buffer, and
  # while the background write holds it the donation is declined instead: correct either way.
  state = step(state)
  state = step(state)
  ckpt.close()  # waits for the background write
  got, meta = Checkpointer(tmp_path).restore_latest(jax.eval_shape(lambda: want))
  assert meta["step"] == 1
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), b)
