"""The SFT baseline: its sequences are the pairs' chosen ones; a short run lowers their loss."""

import jax
import numpy as np
import pytest

from rltf_jax import runs
from rltf_jax.data.vocab import PAD, Vocabulary
from rltf_jax.errors import ConfigError
from rltf_jax.training import sft
from rltf_jax.training.pairs import pack_pairs
from rltf_jax.training.preference import build_preference_data
from test_dpo import plain_sequence, pretrained_base
from test_preference import COHORT, random_dataset, rltf_cfg


def test_sft_sequences_are_the_chosen_sequences():
  ds = random_dataset(num_patients=200, seed=12, max_events=14)
  vocab = Vocabulary.build(ds, always_include=COHORT.codes)
  data = build_preference_data(ds, COHORT, rltf_cfg(num_pairs=30, max_prompt_events=5,
                                                    max_continuation_events=6))
  seqs = sft.sft_sequences(pack_pairs(data, vocab))
  for i in range(data.num_pairs):
    expected, _ = plain_sequence(data, vocab, i, "chosen")
    n = len(expected)
    assert list(seqs.tokens[i, :n]) == [t[0] for t in expected]
    assert list(seqs.visit[i, :n]) == [t[1] for t in expected]
    np.testing.assert_allclose(seqs.age[i, :n], [t[2] for t in expected])
    assert list(seqs.pos[i, :n]) == [t[3] for t in expected]
    assert np.all(seqs.tokens[i, n:] == PAD) and np.all(seqs.age[i, n:] == 0)


def test_sft_lowers_the_loss_of_its_sequences_and_resumes():
  from rltf_jax.data.cohorts import get_cohort
  from rltf_jax.checkpoints import load_decoder
  from rltf_jax.training.pretrain import loss_fn
  cfg, ds, base_dir, root = pretrained_base()
  cfg = cfg.copy_and_resolve_references()
  cfg.rltf.num_pairs = 32
  cfg.sft.epochs, cfg.sft.lr, cfg.sft.warmup_steps, cfg.sft.ckpt_every = 3, 1e-3, 0, 100
  pairs = build_preference_data(ds, get_cohort("dm"), cfg.rltf, root / "pref-sft")
  sft.finetune_sft(cfg, base_dir, pairs, root / "sft", stop_after=3, verbose=False)
  assert (root / "sft" / "latest").is_dir() and not runs.is_done(root / "sft")
  run = sft.finetune_sft(cfg, base_dir, pairs, root / "sft", verbose=False)
  assert runs.is_done(run) and (run / "config.json").exists()
  graphdef, base_params, vocab, _ = load_decoder(base_dir)
  _, tuned_params, tuned_vocab, _ = load_decoder(run)
  assert tuned_vocab == vocab
  seqs = sft.sft_sequences(pack_pairs(pairs, vocab))
  loss = jax.jit(lambda p: loss_fn(graphdef, p, seqs, 1.0)[0])
  assert float(loss(tuned_params)) < float(loss(base_params)) - 0.1
  cfg.sft.lr = 5e-4
  with pytest.raises(ConfigError, match="other parameters"):
    sft.finetune_sft(cfg, base_dir, pairs, run, verbose=False)


def test_a_kill_between_the_last_checkpoint_and_the_finished_marker_resumes_to_the_same_model():
  import json
  from rltf_jax.checkpoints import load_decoder
  from rltf_jax.data.cohorts import get_cohort
  cfg, ds, base_dir, root = pretrained_base()
  cfg = cfg.copy_and_resolve_references()
  cfg.rltf.num_pairs, cfg.sft.epochs = 16, 1
  pairs = build_preference_data(ds, get_cohort("dm"), cfg.rltf, root / "pref-kill")
  run = sft.finetune_sft(cfg, base_dir, pairs, root / "sft-kill", verbose=False)
  before = load_decoder(run)[1]
  record = json.loads((run / runs.RUN_FILE).read_text())
  (run / runs.RUN_FILE).write_text(json.dumps(dict(record, finished=None)))  # the marker never came
  assert not runs.is_done(run)
  assert sft.finetune_sft(cfg, base_dir, pairs, run, verbose=False) == run and runs.is_done(run)
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(load_decoder(run)[1])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert len(steps) == len(set(steps))  # each logged step once
