"""A test helper: fit a tiny model's parameters with one jitted program of `steps` optimiser steps."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def fit(loss_of_params, params, tx: optax.GradientTransformation, steps: int):
  """(params, opt_state, last loss) after `steps` steps of `tx` on `loss_of_params(params)`, all in
  one `fori_loop` (no per-step dispatch, which dominates at these sizes)."""

  def step(_, carry):
    params, opt, _ = carry
    loss, g = jax.value_and_grad(loss_of_params)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  @functools.partial(jax.jit, static_argnums=0)
  def run(n, params, opt):
    return jax.lax.fori_loop(0, n, step, (params, opt, jnp.float32(0)))

  return run(steps, params, tx.init(params))
