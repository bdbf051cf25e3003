"""The SFT baseline: the base decoder fine-tuned with the language-model loss on the pairs' sequences.

The same N sequences as RLTF (the chosen sequences, BOS + prompt + chosen continuation (+ EOS),
exactly as they appear in the packed DPO rows), the same optimiser budget (batch size, epochs,
learning rate and schedule from `cfg.sft`, which the base config copies from `cfg.rltf`) and the
pretraining loss (mean code NLL + `aux_weight` x attribute NLL over every token). The run directory
has the layout of a DPO run (`rltf_jax.training.dpo`), so the sampler loads either alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rltf_jax.data.sequences import TokenBatch, pow2_length
from rltf_jax.data.vocab import PAD
from rltf_jax.training import common, dpo, reference
from rltf_jax.training.pairs import SEG_CHOSEN, SEG_SHARED, PackedPairs, pack_pairs
from rltf_jax.training.preference import PreferenceData


def sft_sequences(packed: PackedPairs) -> TokenBatch:
  """The chosen sequence of every packed pair as a right-padded `TokenBatch` [N, W]."""
  keep = (packed.segment == SEG_SHARED) | (packed.segment == SEG_CHOSEN)
  return TokenBatch(tokens=np.where(keep, packed.tokens, PAD).astype(np.int32),
                    visit=np.where(keep, packed.visit, 0).astype(np.int32),
                    age=np.where(keep, packed.age, 0).astype(np.float32),
                    pos=np.where(keep, packed.pos, 0).astype(np.int32))


def finetune_sft(cfg, base_ckpt_dir, pref_data: PreferenceData, workdir, *,
                 stop_after: int | None = None, verbose: bool = True) -> Path:
  """SFT of the base decoder on the chosen sequences of `pref_data`; returns the run directory.

  Resumes an interrupted run; returns at once when the run is finished."""
  from rltf_jax.models.decoder import load_decoder
  from rltf_jax.training.pretrain import make_train_step
  sc, workdir, base_ckpt_dir = cfg.sft, Path(workdir), Path(base_ckpt_dir)
  graphdef, base_params, vocab, _ = load_decoder(base_ckpt_dir)
  base_id = reference.params_fingerprint(base_params)
  dpo.prepare_run(workdir, cfg, "sft", sc, base_ckpt_dir, pref_data, base_id)
  if (workdir / dpo.DONE_FILE).exists():
    if verbose:
      print(f"sft: {workdir} is finished ({dpo.DONE_FILE}); reusing it", flush=True)
    return workdir
  seqs = sft_sequences(pack_pairs(pref_data, vocab))
  lengths = (seqs.tokens != PAD).sum(1)
  mesh = common.make_mesh(cfg.get("mesh"))
  common.check_batch_divisible(sc.batch_size, mesh, "sft.batch_size")
  total = sc.epochs * -(-pref_data.num_pairs // sc.batch_size)
  optimizer = common.make_optimizer(sc, total)
  make_step = lambda: make_train_step(graphdef, optimizer, float(sc.aux_weight))
  step_key = ("sft", graphdef, json.dumps(sc.to_dict(), sort_keys=True), total)

  def make_batch(i):
    rows = dpo.batch_rows(i, pref_data.num_pairs, sc.batch_size, sc.seed)
    w = pow2_length(lengths[rows].max(), 64, seqs.tokens.shape[1])
    return (TokenBatch(*(a[rows][:, :w] for a in seqs)),)

  if verbose:
    print(f"sft: {pref_data.num_pairs} sequences, {total} steps of {sc.batch_size} -> {workdir}", flush=True)
  dpo.run_loop(name="sft", workdir=workdir, section=sc, init_params=base_params, optimizer=optimizer,
               make_step=make_step, step_key=step_key, mesh=mesh, make_batch=make_batch, total_steps=total,
               stop_after=stop_after, verbose=verbose)
  return workdir
