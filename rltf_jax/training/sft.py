"""The SFT baseline: the base decoder fine-tuned with the language-model loss on the pairs' sequences.

The same N sequences as RLTF (the chosen sequences, BOS + prompt + chosen continuation (+ EOS),
exactly as they appear in the packed DPO rows), the same optimiser budget (batch size, epochs,
learning rate and schedule from `cfg.sft`, which the base config copies from `cfg.rltf`) and the
pretraining loss (mean code NLL + `aux_weight` x attribute NLL over every token). The run directory
has the layout of a DPO run (`rltf_jax.training.finetune`), so the sampler loads either alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rltf_jax.checkpoints import load_decoder
from rltf_jax.data.sequences import TokenBatch, pow2_length
from rltf_jax.data.vocab import PAD
from rltf_jax.training import finetune
from rltf_jax.training.pretrain import loss_fn
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
  sc, base_ckpt_dir = cfg.sft, Path(base_ckpt_dir)
  run = finetune.prepare(cfg, "sft", sc, base_ckpt_dir, pref_data, Path(workdir))
  if run.done:
    if verbose:
      print(f"sft: {run.path} is finished; reusing it", flush=True)
    return run.path
  graphdef, base_params, vocab, _ = load_decoder(base_ckpt_dir)
  seqs = sft_sequences(pack_pairs(pref_data, vocab))
  lengths = (seqs.tokens != PAD).sum(1)
  total = sc.epochs * -(-pref_data.num_pairs // sc.batch_size)

  def take(rows, fit):
    w = pow2_length(lengths[fit].max(), 64, seqs.tokens.shape[1])
    return TokenBatch(*(a[rows][:, :w] for a in seqs))

  if verbose:
    print(f"sft: {pref_data.num_pairs} sequences, {total} steps of {sc.batch_size} -> {run.path}", flush=True)
  make = lambda: lambda params, batch: loss_fn(graphdef, params, batch, float(sc.aux_weight))
  finetune.run(cfg, "sft", sc, run, graphdef, base_params, make, take, pref_data, total,
               stop_after=stop_after, verbose=verbose)
  return run.path
