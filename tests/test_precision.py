"""bf16-operand matmuls (`rltf_jax.models.precision`): values and hand-written gradients against a
reference that rounds the same operands, in every layout the decoder uses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rltf_jax.configs import base as base_config
from rltf_jax.errors import ConfigError
from rltf_jax.models import precision

BF16 = jnp.bfloat16


def rounded(x):
  """x rounded to bf16 and back: what the fast path feeds the matmul unit."""
  return jnp.asarray(x).astype(BF16).astype(jnp.float32)


def exact(subscripts, *operands):
  return jnp.einsum(subscripts, *operands, precision=jax.lax.Precision.HIGHEST)


# (name, a shape, b shape, b transposed, einsum of the product). The shapes pick both ways the
# backward pass may transpose (the activations, or the other operand and the result).
CASES = [
    ("dense weight", (3, 40, 16), (16, 24), False, "...mk,kn->...mn"),
    ("attention scores q k^T", (2, 3, 20, 8), (2, 3, 20, 8), True, "...mk,...nk->...mn"),
    ("scores, short keys", (2, 3, 4, 16), (2, 3, 5, 16), True, "...mk,...nk->...mn"),
    ("attention values p v", (2, 3, 20, 20), (2, 3, 20, 8), False, "...mk,...kn->...mn"),
    ("tall weight", (64, 8), (8, 48), False, "...mk,kn->...mn"),
]


def product(a, b, transposed, dtype):
  return (precision.matmul_nt if transposed else precision.matmul)(a, b, dtype)


@pytest.mark.parametrize("name,a_shape,b_shape,transposed,subscripts", CASES, ids=[c[0] for c in CASES])
def test_bf16_product_and_gradients_match_rounded_reference(name, a_shape, b_shape, transposed, subscripts):
  ka, kb, kg = jax.random.split(jax.random.key(0), 3)
  a, b = jax.random.normal(ka, a_shape), jax.random.normal(kb, b_shape)
  out = product(a, b, transposed, BF16)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, exact(subscripts, rounded(a), rounded(b)), rtol=1e-5, atol=1e-5)

  g = jax.random.normal(kg, out.shape)
  da, db = jax.grad(lambda a, b: jnp.sum(product(a, b, transposed, BF16) * g), argnums=(0, 1))(a, b)
  # Reference gradients of out = A B (or A B^T) with A, B and the cotangent rounded as the fast
  # path rounds them; only the summation order differs.
  ga, gb = jax.grad(lambda ra, rb: jnp.sum(exact(subscripts, ra, rb) * rounded(g)), argnums=(0, 1))(
      rounded(a), rounded(b))
  assert da.dtype == a.dtype and db.dtype == b.dtype
  np.testing.assert_allclose(da, ga, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(db, gb, rtol=1e-5, atol=1e-4)
  # And they are the float32 gradients up to bf16 rounding.
  fa, fb = jax.grad(lambda a, b: jnp.sum(exact(subscripts, a, b) * g), argnums=(0, 1))(a, b)
  for got, want in ((da, fa), (db, fb)):
    assert float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want)) < 1e-2


@pytest.mark.parametrize("name,a_shape,b_shape,transposed,subscripts", CASES, ids=[c[0] for c in CASES])
def test_float32_products_and_gradients_are_plain_autodiff(name, a_shape, b_shape, transposed, subscripts):
  ka, kb, kg = jax.random.split(jax.random.key(1), 3)
  a, b = jax.random.normal(ka, a_shape), jax.random.normal(kb, b_shape)
  out = product(a, b, transposed, jnp.float32)
  np.testing.assert_allclose(out, jnp.einsum(subscripts, a, b), rtol=1e-6, atol=1e-6)
  g = jax.random.normal(kg, out.shape)
  got = jax.grad(lambda a, b: jnp.sum(product(a, b, transposed, jnp.float32) * g), argnums=(0, 1))(a, b)
  want = jax.grad(lambda a, b: jnp.sum(jnp.einsum(subscripts, a, b) * g), argnums=(0, 1))(a, b)
  for x, y in zip(got, want):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_unknown_compute_dtype_is_a_config_error():
  with pytest.raises(ConfigError, match="compute_dtype"):
    precision.compute_dtype("float16")


def test_bf16_decoder_trains_like_float32():
  """Same initial parameters, same batch: the bf16 model's loss and gradients are the float32
  model's up to rounding, and a few steps lower the loss alike."""
  import optax
  from rltf_jax.data.sequences import TokenBatch
  from rltf_jax.models import decoder as dec
  rng = np.random.default_rng(0)
  tokens = rng.integers(4, 60, (4, 24)).astype(np.int32)
  visit = np.cumsum(rng.random((4, 24)) < 0.3, axis=1).astype(np.int32)
  batch = TokenBatch(tokens, visit, (40 + visit * 0.3).astype(np.float32), np.full((4, 24), 11, np.int32))
  losses = {}
  for dtype in ("float32", "bfloat16"):
    cfg = base_config.get_config().model
    cfg.width, cfg.num_layers, cfg.num_heads, cfg.compute_dtype = 64, 2, 2, dtype
    graphdef, params = dec.init_decoder(cfg, 60, seed=0)
    loss = lambda p: -jnp.mean(dec.code_logprobs(graphdef, p, batch)[:, :-1])
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
      value, grads = jax.value_and_grad(loss)(params)
      updates, state = opt.update(grads, state)
      return optax.apply_updates(params, updates), state, value, grads

    trace = []
    for i in range(5):
      params, state, value, grads = step(params, state)
      if i == 0:
        first_grads = grads
      trace.append(float(value))
    losses[dtype] = (np.array(trace), first_grads)
  (f32, g32), (b16, g16) = losses["float32"], losses["bfloat16"]
  np.testing.assert_allclose(b16[0], f32[0], rtol=2e-3)
  np.testing.assert_allclose(b16, f32, rtol=2e-2)
  assert b16[-1] < b16[0] - 0.1
  flat = lambda g: jnp.concatenate([x.ravel() for x in jax.tree.leaves(g)])
  assert float(jnp.linalg.norm(flat(g16) - flat(g32)) / jnp.linalg.norm(flat(g32))) < 3e-2
