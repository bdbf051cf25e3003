"""DPO-Positive fine-tuning of the base decoder on one cohort's preference pairs.

Loss (method.md), with d_C = log pi(C|P) - log ref(C|P), d_R = log pi(R|P) - log ref(R|P) and the
positive penalty q = max(0, log ref(C|P) - log pi(C|P)):

  placement "outside" (the paper's text):  -log sigmoid(beta * (d_C - d_R)) + lambda * q
  placement "inside"  (Smaug's form):      -log sigmoid(beta * (d_C - d_R - lambda * q))

lambda = 0 is plain sigmoid DPO in both. Log-probabilities are sums of code log-probabilities
(`Decoder.code_logits`, conditioned on each event's visit/place/gap attributes as in pretraining)
over the continuation tokens only, EOS included when the continuation reaches the record's end;
the attribute heads are not scored. The reference log-probabilities are computed once per pair
set and cached (`rltf_jax.training.reference`); the reference model never runs during training.

Speed: a pair is one packed row (layout in `rltf_jax.training.pairs`): the prompt and the shared
part of the continuations run once, and code logits ([.., V], the largest activation) are computed
only at the scored positions, gathered from the hidden states.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from rltf_jax.checkpoints import load_decoder
from rltf_jax.errors import ConfigError
from rltf_jax.training import finetune, loop, reference
from rltf_jax.training.mesh import make_mesh
from rltf_jax.training.pairs import SEG_PAD, bucketed_batch, pack_pairs, pair_logps, row_shapes
from rltf_jax.training.preference import PreferenceData

PLACEMENTS = ("outside", "inside")


# ---------------------------------------------------------------------------- loss
def dpo_positive_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, *, beta: float,
                      lam: float, placement: str = "outside"):
  """(mean loss, metrics) of DPO-Positive over f32 [B] sequence log-probabilities.

  The reference values are constants: no gradient reaches them.
  """
  if placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {placement!r}")
  ref_chosen = jax.lax.stop_gradient(ref_chosen)
  ref_rejected = jax.lax.stop_gradient(ref_rejected)
  chosen_delta = policy_chosen - ref_chosen
  rejected_delta = policy_rejected - ref_rejected
  penalty = jnp.maximum(0.0, ref_chosen - policy_chosen)
  if placement == "outside":
    losses = -jax.nn.log_sigmoid(beta * (chosen_delta - rejected_delta)) + lam * penalty
  else:
    losses = -jax.nn.log_sigmoid(beta * (chosen_delta - rejected_delta - lam * penalty))
  metrics = dict(
      loss=losses.mean(),
      reward_margin=(beta * (chosen_delta - rejected_delta)).mean(),
      reward_accuracy=(chosen_delta > rejected_delta).mean(),
      reward_chosen=(beta * chosen_delta).mean(),
      reward_rejected=(beta * rejected_delta).mean(),
      logp_chosen=policy_chosen.mean(),
      logp_rejected=policy_rejected.mean(),
      penalty=penalty.mean())
  return losses.mean(), metrics


# ---------------------------------------------------------------------------- step
def make_loss(graphdef, *, beta: float, lam: float, placement: str):
  """`(params, (packed, ref_chosen, ref_rejected)) -> (loss, metrics)`; `beta` and `lam` are
  constants of the closure."""
  if placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {placement!r}")

  def loss_fn(params, batch):
    packed, ref_chosen, ref_rejected = batch
    chosen, rejected = pair_logps(graphdef, params, packed)
    loss, metrics = dpo_positive_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, lam=lam,
                                      placement=placement)
    return loss, dict(metrics, tokens=(packed.segment != SEG_PAD).sum())

  return loss_fn


def make_train_step(graphdef, optimizer, *, beta: float, lam: float, placement: str):
  """Pure `(state, (packed, ref_chosen, ref_rejected)) -> (state, metrics)` (`loop.make_step`)."""
  return loop.make_step(make_loss(graphdef, beta=beta, lam=lam, placement=placement), optimizer)


def finetune_dpo(cfg, base_ckpt_dir, pref_data: PreferenceData, workdir, *,
                 stop_after: int | None = None, verbose: bool = True) -> Path:
  """DPO-Positive fine-tune of the base decoder in `base_ckpt_dir` on `pref_data`; returns the run
  directory (a checkpoint `load_decoder` reads). Resumes an interrupted run and returns at once
  when the run is finished. `stop_after` ends this call after that many steps (tests)."""
  rc, base_ckpt_dir = cfg.rltf, Path(base_ckpt_dir)
  if rc.penalty_placement not in PLACEMENTS:
    raise ConfigError(f"rltf.penalty_placement must be one of {PLACEMENTS}, got {rc.penalty_placement!r}")
  run = finetune.prepare(cfg, "rltf", rc, base_ckpt_dir, pref_data, Path(workdir))
  if run.done:
    if verbose:
      print(f"rltf: {run.path} is finished; reusing it", flush=True)
    return run.path
  graphdef, base_params, vocab, model_cfg = load_decoder(base_ckpt_dir)
  # The cached reference values depend on the arithmetic as well as the parameters.
  reference_id = f"{reference.params_fingerprint(base_params)}:{model_cfg.compute_dtype}"
  packed = pack_pairs(pref_data, vocab)
  cache_dir = pref_data.directory or run.path
  ref_chosen, ref_rejected = reference.reference_logps(
      graphdef, base_params, pref_data, packed, cache_dir, batch_size=rc.reference_batch_size,
      reference_id=reference_id, mesh=make_mesh(cfg.mesh))
  total = rc.epochs * -(-pref_data.num_pairs // rc.batch_size)
  shapes = row_shapes(packed)

  def take(rows, fit):
    return bucketed_batch(packed, rows, shapes, fit=fit), ref_chosen[rows], ref_rejected[rows]

  if verbose:
    print(f"rltf: {pref_data.num_pairs} pairs, {total} steps of {rc.batch_size} "
          f"(beta {rc.beta}, lambda {rc.positive_lambda} {rc.penalty_placement}) -> {run.path}", flush=True)
  make = lambda: make_loss(graphdef, beta=float(rc.beta), lam=float(rc.positive_lambda),
                           placement=rc.penalty_placement)
  finetune.run(cfg, "rltf", rc, run, graphdef, base_params, make, take, pref_data, total,
               stop_after=stop_after, verbose=verbose, show=("reward_margin", "reward_accuracy", "penalty"))
  return run.path
