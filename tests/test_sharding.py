"""Sharding: the parameter rules, and FSDP on 4 fake CPU devices = 1 device.

Fake devices need XLA_FLAGS before JAX is imported, hence the subprocesses."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from rltf_jax import runs
from rltf_jax.checkpoints import load_decoder, restore_params
from rltf_jax.models import decoder as dec
from rltf_jax.sampling import sampler
from rltf_jax.training import mesh as mesh_lib
from test_pretrain import tiny_config

REPO = Path(__file__).resolve().parents[1]


def run_on_fake_devices(script: str, *args: str, devices: int = 4, timeout: int = 300) -> dict:
  """Runs `script` with `args` in a subprocess with `devices` CPU devices; returns its last stdout
  line as JSON."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
  res = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=timeout)
  assert res.returncode == 0, res.stderr[-3000:]
  return json.loads(res.stdout.strip().splitlines()[-1])


def specs(sizes: dict, cfg) -> dict[str, P]:
  mesh = AbstractMesh(tuple(sizes[a] for a in mesh_lib.MESH_AXES), mesh_lib.MESH_AXES)
  _, abstract = dec.abstract_decoder(cfg.model, 50)
  leaves = jax.tree_util.tree_flatten_with_path(abstract)[0]
  return {mesh_lib.path_name(p): mesh_lib.param_spec(mesh, mesh_lib.path_name(p), x.shape)
          for p, x in leaves}


def test_rules_name_every_decoder_parameter():
  cfg = tiny_config()
  cfg.model.head_codes, cfg.model.tail_rank = 20, 8
  _, abstract = dec.abstract_decoder(cfg.model, 50)
  for path, x in jax.tree_util.tree_flatten_with_path(abstract)[0]:
    assert mesh_lib.logical_axes(mesh_lib.path_name(path), x.ndim) is not None, path


def test_fsdp_splits_the_embedding_dimension_and_tensor_the_others():
  cfg = tiny_config()  # width 32, vocabulary 50, factorised head of 20 codes, tail rank 8
  cfg.model.head_codes, cfg.model.tail_rank = 20, 8
  got = specs(dict(data=2, fsdp=2, tensor=1), cfg)
  assert got["code_embed/embedding"] == P(None, "fsdp")
  assert got["blocks/0/qkv/kernel"] == P("fsdp", None)
  assert got["blocks/0/down/kernel"] == P(None, "fsdp")
  assert got["unembed/kernel"] == P("fsdp", None)
  assert got["tail_unembed/kernel"] == P(None, None)  # no "embed" dimension
  assert got["final_norm/scale"] == P(None)
  got = specs(dict(data=1, fsdp=2, tensor=2), cfg)
  assert got["blocks/0/up/kernel"] == P("fsdp", "tensor")
  assert got["code_embed/embedding"] == P("tensor", "fsdp")
  assert got["tail_unembed/kernel"] == P(None, "tensor")  # 30 tail codes
  assert got["unembed/kernel"] == P("fsdp", None)  # 21 = 20 head codes + the tail row: odd, whole
  got = specs(dict(data=1, fsdp=3, tensor=1), cfg)
  assert got["blocks/0/qkv/kernel"] == P(None, None)  # 32 is not divisible by 3
  assert specs(dict(data=1, fsdp=1, tensor=1), cfg)["blocks/0/qkv/kernel"] == P(None, None)


def test_unnamed_parameters_split_their_largest_divisible_dimension():
  mesh = AbstractMesh((1, 2, 1), mesh_lib.MESH_AXES)
  assert mesh_lib.param_spec(mesh, "lstm/w", (6, 16)) == P(None, "fsdp")
  assert mesh_lib.param_spec(mesh, "lstm/w", (16, 7)) == P("fsdp", None)
  assert mesh_lib.param_spec(mesh, "lstm/w", (5, 7)) == P(None, None)
  assert mesh_lib.param_spec(mesh, "lstm/b", (16,)) == P(None)
  assert mesh_lib.param_spec(mesh, "opt_state/0/count", ()) == P()


FSDP_SCRIPT = """
    import json, sys, jax, numpy as np
    from jax.sharding import PartitionSpec as P
    from test_pretrain import tiny_config, golden_batch
    from rltf_jax.checkpoints import Checkpointer
    from rltf_jax.training import pretrain as pt
    import tempfile
    assert len(jax.devices()) == 4
    out, params = {}, {}
    for name, sizes in (("one", dict(data=1)), ("fsdp", dict(data=2, fsdp=2)),
                        ("tensor", dict(data=1, fsdp=2, tensor=2))):
      cfg = tiny_config()
      cfg.model.head_codes, cfg.model.tail_rank = 20, 8
      cfg.mesh.update(sizes)
      _, mesh, step, init, shard, batch_shard = pt.build_step(cfg, 50, cfg.pretrain.steps)
      state = init()
      losses = []
      for i in range(3):
        state, m = step(state, jax.device_put(golden_batch(), batch_shard))
        losses.append(float(m["loss"]))
      up = state["params"]["blocks"][0]["up"]["kernel"]
      mu = state["opt_state"][1][0].mu["blocks"][0]["up"]["kernel"]
      out[name] = dict(losses=losses, spec=str(up.sharding.spec), mu_spec=str(mu.sharding.spec),
                       shard=list(up.addressable_shards[0].data.shape), devices=len(up.sharding.device_set))
      params[name] = jax.device_get(state["params"])
      if name == "fsdp":  # a checkpoint comes back in the sharded layout
        with tempfile.TemporaryDirectory() as d:
          _, _, compiled = pt._compiled_step(cfg, 50, cfg.pretrain.steps)
          ckpt = Checkpointer(d)
          ckpt.save_latest(3, state, {})
          back, _ = ckpt.restore_latest(compiled.state_abstract)
          ckpt.close()
          b = back["params"]["blocks"][0]["up"]["kernel"]
          out[name]["restored"] = [str(b.sharding.spec), bool(np.array_equal(b, up))]
        ckpt = Checkpointer(sys.argv[1])  # read by the test's own process, on one device
        ckpt.save_best(3, state["params"], {})
        ckpt.close()
    for name in ("fsdp", "tensor"):
      diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params["one"], params[name])
      out[name]["max_param_diff"] = max(jax.tree.leaves(diff))
    print(json.dumps(out))
"""


@pytest.mark.slow  # three compiles of the step in a subprocess: 75 s on a loaded 2-core machine
def test_fsdp_on_four_devices_matches_one_device(tmp_path):
  """(data 2, fsdp 2) and (fsdp 2, tensor 2) give the losses and parameters of one device after
  three steps, up to float rounding (the sums over the batch run in another order; Adam turns
  such differences on near-zero gradients into ~1e-6 of the parameters). A sharded checkpoint
  comes back in its layout there, and on one device here."""
  out = run_on_fake_devices(FSDP_SCRIPT, str(tmp_path))
  one, fsdp, tensor = out["one"], out["fsdp"], out["tensor"]
  assert one["devices"] == 1 and fsdp["devices"] == 4 and tensor["devices"] == 4
  # MLP up-projection [32, 128]: rows over fsdp (16 each); with tensor 2 the columns too.
  assert fsdp["spec"] == str(P("fsdp", None)) and fsdp["shard"] == [16, 128]
  assert fsdp["mu_spec"] == fsdp["spec"]  # Adam's moments are sharded like their parameters
  assert tensor["spec"] == str(P("fsdp", "tensor")) and tensor["shard"] == [16, 64]
  assert fsdp["restored"] == [fsdp["spec"], True]
  for other in (fsdp, tensor):
    np.testing.assert_allclose(other["losses"], one["losses"], rtol=1e-6)
    assert other["max_param_diff"] < 1e-5, other["max_param_diff"]
  cfg = tiny_config()
  cfg.model.head_codes, cfg.model.tail_rank = 20, 8
  params = restore_params(tmp_path, dec.abstract_decoder(cfg.model, 50)[1])
  up = params["blocks"][0]["up"]["kernel"]
  assert len(up.sharding.device_set) == 1 and up.shape == (32, 128)


def generator_inputs():
  """(graphdef, params, vocabulary) of the generation tests: a tiny random decoder over 26 codes."""
  from rltf_jax.configs import base as base_config
  from rltf_jax.data.vocab import Vocabulary
  c = base_config.get_config().model
  c.width, c.num_layers, c.num_heads, c.compute_dtype = 32, 1, 2, "float32"
  graphdef, params = dec.init_decoder(c, 30, seed=3)
  vocab = Vocabulary(("<pad>", "<bos>", "<eos>", "<unk>") + tuple(f"ICD10CM/A{i:02d}" for i in range(26)))
  return graphdef, params, vocab


GENERATION_SCRIPT = """
    import json, jax, numpy as np
    from test_sharding import generator_inputs
    from rltf_jax.sampling.generator import TransformerGenerator
    assert len(jax.devices()) == 4
    graphdef, params, vocab = generator_inputs()
    # 6 rows a batch: not a multiple of the 4 devices, so every batch is padded and unpadded.
    gen = TransformerGenerator(graphdef, params, vocab, batch_size=6, max_prompt_len=16)
    one = TransformerGenerator(graphdef, params, vocab, batch_size=6, max_prompt_len=16)
    one.mesh, one.params = None, params  # what a process with one device runs
    out = dict(devices=len(gen.params["unembed"]["kernel"].sharding.device_set))
    for name, g in (("four", gen), ("one", one)):
      prompts = g.generate_patients(7, seed=2, max_events=6)
      done = g.complete(prompts, max_new_events=10, seed=5)
      out[name] = dict(prompts=prompts.code.tolist(), codes=done.code.tolist(), day=done.day.tolist(),
                       visit=done.visit.tolist(), lengths=done.lengths.tolist(),
                       ll=g.log_likelihood(prompts).tolist())
    print(json.dumps(out))
"""


def test_padded_rows_draw_the_unpadded_numbers_and_copy_row_zero():
  key = jax.random.key(3)
  want = np.asarray(sampler._uniforms(key, 2, 6, None))
  got = np.asarray(sampler._uniforms(key, 2, 8, 6))
  np.testing.assert_array_equal(got[:, :6], want)
  np.testing.assert_array_equal(got[:, 6:], want[:, :1].repeat(2, 1))
  a, b = sampler.pad_rows((np.arange(6), np.arange(12).reshape(6, 2)), 4)
  assert a.tolist() == [0, 1, 2, 3, 4, 5, 0, 0] and b.shape == (8, 2) and (b[6:] == b[0]).all()
  assert sampler.pad_rows((np.arange(8),), 4)[0].shape == (8,)


@pytest.mark.slow  # four compiles of the sampler in a subprocess: ~40 s on a loaded 2-core machine
def test_generation_on_four_devices_gives_the_same_tokens():
  """TransformerGenerator on 4 devices: the generations of one device for the same seed, with
  batches of 6 rows (padded to 8 and unpadded); scores to float rounding."""
  out = run_on_fake_devices(GENERATION_SCRIPT)
  assert out["devices"] == 4
  four, one = out["four"], out["one"]
  for key in ("prompts", "codes", "day", "visit", "lengths"):
    assert four[key] == one[key], key
  assert sum(one["lengths"]) > 0
  np.testing.assert_allclose(four["ll"], one["ll"], rtol=1e-6)


PROCESS_SCRIPT = """
    import json, sys, jax, numpy as np
    port, num_processes, process_id = (int(a) for a in sys.argv[1:4])
    if num_processes > 1:
      jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                 process_id=process_id, local_device_ids=[0])
    from jax.experimental import multihost_utils
    from test_pretrain import tiny_config, golden_batch
    from rltf_jax.training import pretrain as pt
    cfg = tiny_config()
    cfg.mesh.update(dict(data=1, fsdp=num_processes))  # parameters split across the processes
    _, mesh, step, init, shard, batch_shard = pt.build_step(cfg, 50, cfg.pretrain.steps)
    state, losses = init(), []
    for i in range(3):
      state, m = step(state, jax.device_put(golden_batch(), batch_shard))
      losses.append(float(m["loss"]))
    up = multihost_utils.process_allgather(state["params"]["blocks"][0]["up"]["kernel"], tiled=True)
    print(json.dumps(dict(losses=losses, processes=jax.process_count(), devices=len(jax.devices()),
                          up=np.asarray(up).ravel()[:64].tolist())))
"""


def free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_processes(script: str, groups: list[tuple], timeout: int = 300) -> list[dict]:
  """Starts, at once, one subprocess per (num_processes, process_id, *args) of `groups` (the
  processes of a group find each other on one localhost port); returns each one's last stdout
  line as JSON, in order."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'tests'}")
  env.pop("XLA_FLAGS", None)
  ports = {}
  procs = []
  for n, i, *args in groups:
    port = ports.setdefault((n, *args[:1]), free_port())
    procs.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(port), str(n), str(i),
                                   *map(str, args)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True))
  outs = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=timeout)
      assert p.returncode == 0, stderr[-3000:]
      outs.append(dict(json.loads(stdout.strip().splitlines()[-1]), stdout=stdout))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


@pytest.mark.slow  # three processes compiling the step on a 2-core machine: ~60 s
def test_two_processes_on_localhost_match_one():
  """Two `jax.distributed` processes with one CPU device each, the state split over both by
  "fsdp": the losses and parameters of one process on one device."""
  first, second, alone = run_processes(PROCESS_SCRIPT, [(2, 0), (2, 1), (1, 0)])
  assert first["processes"] == second["processes"] == 2 and first["devices"] == 2
  assert alone["processes"] == 1 and alone["devices"] == 1
  assert first["losses"] == second["losses"]  # one replicated value, read on each process
  np.testing.assert_allclose(first["losses"], alone["losses"], rtol=1e-6)
  np.testing.assert_allclose(first["up"], alone["up"], atol=1e-5)


PRETRAIN_SCRIPT = """
    import json, sys, jax
    port, num_processes, process_id = (int(a) for a in sys.argv[1:4])
    workdir, stop_after = sys.argv[4], int(sys.argv[5]) or None
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                               process_id=process_id, local_device_ids=[0])
    from test_sharding import pretrain_inputs
    from rltf_jax.training import pretrain as pt
    cfg, ds, vocab = pretrain_inputs(fsdp=num_processes)
    rows, encode = [], pt.Batches.__call__
    pt.Batches.__call__ = lambda self, step: rows.append(self.share) or encode(self, step)
    pt.pretrain(cfg, ds, vocab, workdir, stop_after=stop_after, verbose=False)
    print(json.dumps(dict(shares=sorted(set(rows)))))
"""


def pretrain_inputs(fsdp: int = 1):
  """(config, dataset, vocabulary) of the multi-process pretraining test: 8 steps of 8 rows."""
  from rltf_jax.configs import simulator
  from rltf_jax.data import simulate
  from rltf_jax.data.events import assign_splits
  from rltf_jax.data.vocab import Vocabulary
  ds = simulate.simulate(simulator.get_config(), 200, 0)
  ds = ds.with_splits(assign_splits(ds.subject_id, (0.8, 0.2, 0.0), 0))
  cfg = tiny_config(steps=8, ckpt_every=4, eval_every=4, log_every=1)
  cfg.mesh.update(dict(data=1, fsdp=fsdp))
  return cfg, ds, Vocabulary.build(ds, min_count=3)


# In the default suite: the issue's own check of several processes (~60 s on 2 cores; the other
# subprocess tests are `-m slow`).
def test_two_processes_pretrain_resume_and_match_one(tmp_path):
  """`pretrain` as a pair of processes, each encoding half of every batch: interrupted after step
  4, resumed by the pair from the checkpoint they wrote, it ends where one process does, with
  metrics written once (by process 0)."""
  from rltf_jax.training import pretrain as pt
  pair, alone = tmp_path / "pair", tmp_path / "alone"
  first = run_processes(PRETRAIN_SCRIPT, [(2, 0, pair, 4), (2, 1, pair, 4)])
  assert [o["shares"] for o in first] == [[[0, 4]], [[4, 8]]]
  assert not runs.is_done(pair)
  run_processes(PRETRAIN_SCRIPT, [(2, 0, pair, 0), (2, 1, pair, 0)])
  assert runs.is_done(pair)
  pt.pretrain(*pretrain_inputs(), alone, verbose=False)  # the reference: this process, one device
  lines = {name: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
           for name, d in (("pair", pair), ("alone", alone))}
  steps = [l["step"] for l in lines["pair"] if "loss" in l]
  assert steps == list(range(1, 9))  # each step once: process 0 alone wrote, the resume dropped none
  for key in ("loss", "valid_loss"):
    got = [l[key] for l in lines["pair"] if key in l]
    want = [l[key] for l in lines["alone"] if key in l]
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got, want, rtol=1e-5)
  for x, y in zip(jax.tree.leaves(load_decoder(pair)[1]), jax.tree.leaves(load_decoder(alone)[1])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)


WHOLE_PIPELINE_SCRIPT = """
    import json, os, runpy, sys
    port, num_processes, process_id, workdir = sys.argv[1:5]
    flags = [f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
             f"--process_id={process_id}"]
    if num_processes == "1":  # the reference: one process whose mesh has the pair's two devices
      os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
      flags = []
    sys.argv = ["launch.py", "--config=configs/scd.py:smoke", f"--workdir={workdir}", *flags,
                "--config.mesh.data=0"]
    try:
      runpy.run_path("launch.py", run_name="__main__")
      status = 0
    except SystemExit as e:
      status = e.code or 0
    from rltf_jax import synthesize  # then a synthetic dataset from the run, by the same processes
    synthesize.synthesize(f"{workdir}/scd", "rltf", 12, "continue", f"{workdir}/synthetic", shard=5)
    print(json.dumps(dict(status=status)))
"""


def _without(tree, keys=("timing", "seconds", "source")):
  """A metrics tree without the fields that differ between any two runs (seconds, own paths)."""
  if isinstance(tree, dict):
    return {k: _without(v, keys) for k, v in tree.items() if k not in keys}
  return tree


@pytest.mark.slow  # two smoke pipelines at once, one over two processes: 4-6 min on 2 loaded cores
def test_launch_distributed_runs_the_whole_pipeline_to_the_numbers_of_one_process(tmp_path):
  """`launch.py --distributed` as two processes (one CPU device each) runs every stage (data, base
  model, DPO with its reference pass, SFT, calibration, the evaluations with their forecast draws,
  privacy, report), then `synthesize`: every metrics.json, the report's numbers, the fine-tunes'
  losses and the synthetic events are those of one process over the same two-device mesh, bit for
  bit. (Against one device the sums over a batch run in another order: the numbers agree to
  ~1e-7 until a sampled token flips; see docs/running.md.)"""
  pair, alone = tmp_path / "pair", tmp_path / "alone"
  outs = run_processes(WHOLE_PIPELINE_SCRIPT, [(2, 0, pair), (2, 1, pair), (1, 0, alone)], timeout=1500)
  assert [o["status"] for o in outs] == [0, 0, 0]
  assert "[eval] rltf ready" in outs[0]["stdout"] and "[eval] rltf ready" in outs[2]["stdout"]
  assert "[eval]" not in outs[1]["stdout"]  # progress from process 0 only
  data = lambda root: next(root.glob("data-*"))
  for name in ("vocab.json", *(f"dataset/{p.name}" for p in (data(alone) / "dataset").iterdir())):
    assert (data(pair) / name).read_bytes() == (data(alone) / name).read_bytes(), name
  read = lambda root, *parts: json.loads(root.joinpath(*parts).read_text())
  for method in ("base", "rltf", "sft"):
    got, want = (_without(read(root, "scd", "eval", method, "metrics.json")) for root in (pair, alone))
    assert got == want, method
    assert got["fidelity"]["rouge1"]["value"] > 0  # real numbers, not two empty evaluations
  assert _without(read(pair, "scd", "report", "metrics.json")) == \
      _without(read(alone, "scd", "report", "metrics.json"))
  assert _without(read(pair, "scd", "privacy", "privacy.json")) == \
      _without(read(alone, "scd", "privacy", "privacy.json"))
  for run in ("base-*", "scd/rltf", "scd/sft"):  # each line once (process 0 alone writes)
    lines = [[_without(l, ("time", "tokens_per_s"))
              for l in map(json.loads, (next(root.glob(run)) / "metrics.jsonl").read_text().splitlines())]
             for root in (pair, alone)]
    assert lines[0] == lines[1] and any("loss" in l for l in lines[0]), run
  import pyarrow.parquet as pq
  events = lambda root: pq.read_table(root / "synthetic" / "data")
  assert events(pair).num_rows > 0 and events(pair).equals(events(alone))
  assert not list(pair.rglob(".*.tmp-*")) and not (pair / "synthetic.partial").exists()


PROCESS_GENERATION_SCRIPT = """
    import json, sys, jax
    port, num_processes, process_id = (int(a) for a in sys.argv[1:4])
    if num_processes > 1:
      jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                 process_id=process_id, local_device_ids=[0])
    from test_sharding import generator_inputs
    from rltf_jax.sampling.generator import TransformerGenerator
    graphdef, params, vocab = generator_inputs()
    # Batches of 5 rows, then 2: both padded to a multiple of the 2 processes and unpadded.
    g = TransformerGenerator(graphdef, params, vocab, batch_size=5, max_prompt_len=16)
    prompts = g.generate_patients(7, seed=3, max_events=6)  # seed 2: the random model dates an event 130+ years on, which PatientEvents refuses
    done = g.complete(prompts, max_new_events=10, seed=5)
    print(json.dumps(dict(processes=jax.process_count(), prompts=prompts.code.tolist(),
                          codes=done.code.tolist(), day=done.day.tolist(), visit=done.visit.tolist(),
                          lengths=done.lengths.tolist())))
"""


@pytest.mark.slow  # three processes compiling the sampler on a 2-core machine: ~40 s
def test_generation_on_two_processes_gives_the_tokens_of_one():
  """Unconditional and conditional generation with the rows split over two `jax.distributed`
  processes (each its share on its own device, gathered in row order): one process's tokens."""
  first, second, alone = run_processes(PROCESS_GENERATION_SCRIPT, [(2, 0), (2, 1), (1, 0)])
  assert first["processes"] == 2 and alone["processes"] == 1
  for key in ("prompts", "codes", "day", "visit", "lengths"):
    assert first[key] == second[key] == alone[key], key
  assert sum(alone["lengths"]) > 0


def test_a_process_share_draws_its_rows_numbers():
  """The uniforms of rows [offset, offset + b) of a padded batch are those rows of the whole."""
  key = jax.random.key(4)
  whole = np.asarray(sampler._uniforms(key, 1, 8, 7))
  for offset in (0, 4):
    part = np.asarray(sampler._uniforms(key, 1, 4, 7, offset, 8))
    np.testing.assert_array_equal(part, whole[:, offset:offset + 4])


def test_batch_shares_make_up_the_whole_batch():
  """The rows [lo, hi) a process encodes (training and validation, packed or not) are those rows
  of the batch one process encodes."""
  from rltf_jax.configs import simulator
  from rltf_jax.data import simulate
  from rltf_jax.data.vocab import Vocabulary
  from rltf_jax.training import pretrain as pt
  ds = simulate.simulate(simulator.get_config(), 120, 3)
  vocab = Vocabulary.build(ds, min_count=2)
  idx = np.arange(ds.num_patients)
  for pack in (False, True):
    whole = pt.Batches(ds, vocab, idx, 8, 32, 5, pack=pack)
    parts = [pt.Batches(ds, vocab, idx, 8, 32, 5, pack=pack, share=s) for s in ((0, 2), (2, 6), (6, 8))]
    for step in (0, 3, 40):
      want = whole(step)
      got = [b(step) for b in parts]
      for name, array in want._asdict().items():
        np.testing.assert_array_equal(np.concatenate([getattr(g, name) for g in got]), array, err_msg=name)
    valid = pt.validation_batches(ds, vocab, idx[:37], 8, 32, pack=pack)
    halves = [pt.validation_batches(ds, vocab, idx[:37], 8, 32, pack=pack, share=s) for s in ((0, 4), (4, 8))]
    assert len(valid) == len(halves[0]) == len(halves[1])
    for want, a, b in zip(valid, *halves):
      for name, array in want._asdict().items():
        np.testing.assert_array_equal(np.concatenate([getattr(a, name), getattr(b, name)]), array)


def test_process_rows_of_one_process_are_the_whole_batch():
  mesh = mesh_lib.make_mesh(tiny_config().mesh)
  assert mesh_lib.process_rows(mesh_lib.data_sharding(mesh), 8) == (0, 8)


DPO_SCRIPT = """
    import json, jax, ml_collections, numpy as np
    from rltf_jax.configs import base as base_config
    from test_dpo import tiny_decoder
    from test_preference import COHORT, random_dataset, rltf_cfg
    from rltf_jax.data.vocab import Vocabulary
    from rltf_jax.training import dpo, loop, reference
    from rltf_jax.training.mesh import make_mesh
    from rltf_jax.training.optimizer import make_optimizer
    from rltf_jax.training.pairs import bucketed_batch, pack_pairs, row_shapes
    from rltf_jax.training.preference import build_preference_data
    ds = random_dataset(num_patients=200, seed=11, max_events=14)
    vocab = Vocabulary.build(ds, always_include=COHORT.codes)
    data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=24, max_prompt_events=6,
                                                      max_continuation_events=7))
    graphdef, params = tiny_decoder(len(vocab))
    packed = pack_pairs(data, vocab)
    rc = base_config.get_config().rltf
    rc.lr = 1e-3
    optimizer = make_optimizer(rc, 4)
    init = lambda p: loop.initial_state(p, optimizer)
    # No penalty: the policy starts at the reference, where max(0, ref - policy) has its kink and
    # the sign of a last-bit difference would choose the gradient.
    make = lambda: loop.make_step(dpo.make_loss(graphdef, beta=rc.beta, lam=0.0,
                                                placement=rc.penalty_placement), optimizer)
    out = {}
    for name, sizes in (("one", dict(data=1)), ("fsdp", dict(data=2, fsdp=2))):
      mesh = make_mesh(ml_collections.ConfigDict(sizes))
      # Batches of 5 pairs: 8 on the 4 devices.
      chosen, rejected = reference.compute_reference_logps(graphdef, params, packed, 5, mesh)
      step = loop.compile_step(("dpo-sharding-test", name), make, init, jax.eval_shape(init, params), mesh)
      state, losses = step.init(params), []
      rows = np.arange(8)
      batch = (bucketed_batch(packed, rows, row_shapes(packed)), chosen[rows], rejected[rows])
      for i in range(3):
        state, m = step.step(state, jax.device_put(batch, step.batch_sharding))
        losses.append(float(m["loss"]))
      qkv = state["params"]["blocks"][0]["qkv"]["kernel"]
      out[name] = dict(chosen=chosen.tolist(), rejected=rejected.tolist(), losses=losses,
                       spec=str(qkv.sharding.spec), qkv=np.asarray(qkv).ravel()[:256].tolist())
    print(json.dumps(out))
"""


@pytest.mark.slow  # reference passes and DPO steps compiled for two meshes: ~60 s on 2 loaded cores
def test_reference_pass_and_dpo_on_four_devices_match_one_device():
  out = run_on_fake_devices(DPO_SCRIPT)
  one, fsdp = out["one"], out["fsdp"]
  assert fsdp["spec"] == str(P("fsdp", None)) and one["spec"] == str(P(None, None))
  np.testing.assert_allclose(fsdp["chosen"], one["chosen"], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(fsdp["rejected"], one["rejected"], rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(fsdp["losses"], one["losses"], rtol=1e-5)
  np.testing.assert_allclose(fsdp["qkv"], one["qkv"], atol=1e-5)
