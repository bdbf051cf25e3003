"""Matrix products in the model's compute dtype, with a gradient that keeps every dot fast.

bfloat16: on CPUs with AMX or AVX512-BF16 (this project's machines), XLA hands a dot whose operands
are bfloat16 and whose result is float32 to YNNPACK, which runs it about 5x faster than a float32
dot (~1.7 TFLOP/s against ~0.33 on two cores); GPUs and TPUs have the same split. Parameters,
activations between matmuls, norms, softmaxes and losses all stay float32; only the operands of
each product are rounded to bfloat16 (8 bits of mantissa), and every sum is accumulated in float32.
float32 (the default, `model.compute_dtype`): the same products without rounding. bf16 is not the
default because bf16-pretrained base models, at equal validation loss, served RLTF worse in our
seed study (docs/config.md, compute_dtype).

Why a custom gradient: YNNPACK takes a dot only when its left operand contracts its last axis.
JAX's own gradient of `x @ w` with respect to `w` contracts `x` over its leading (row) axis, which
XLA then runs on a transposed view with its generic dot (in float32, even for bf16 inputs), slower
than the whole forward pass. Here the backward pass writes one operand out transposed first (an
optimisation barrier keeps XLA from folding the copy back into a strided view) and multiplies in
the fast form. In float32 this alone took the benchmark's pretraining step from 1.54 s to 1.15 s.

`matmul(a, b, dtype)` and `matmul_nt(a, b, dtype)` are the two products the decoder needs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rltf_jax.errors import ConfigError

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype of a `model.compute_dtype` name."""
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f"model.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
  return COMPUTE_DTYPES[name]


def _swap_last(x):
  """x with its last two axes swapped, written out in that order (not a strided view)."""
  t = jnp.swapaxes(x, -1, -2)
  return lax.optimization_barrier(t[..., None]).reshape(t.shape)


def _dot(a, b, contract_b: int):
  """f32 product of a [..., M, K] with b [..., K, N] (contract_b=-2) or [..., N, K] (-1)."""
  batch = tuple(range(a.ndim - 2))
  dims = (((a.ndim - 1,), (b.ndim + contract_b,)), (batch, batch))
  return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _product(a, b, b_transposed: bool, dt):
  """a b (or a b^T) with both operands in `dt`, float32 result."""
  return _dot(a.astype(dt), b.astype(dt), -1 if b_transposed else -2)


def _product_fwd(a, b, b_transposed, dt):
  a_c, b_c = a.astype(dt), b.astype(dt)  # "_c": in the compute dtype
  zeros = (jnp.zeros((), a.dtype), jnp.zeros((), b.dtype))  # remember the input dtypes
  return _dot(a_c, b_c, -1 if b_transposed else -2), (a_c, b_c, zeros)


def _product_bwd(b_transposed, dt, residuals, g):
  a_c, b_c, (za, zb) = residuals
  g_c = g.astype(dt)
  m, k = a_c.shape[-2:]
  n = g_c.shape[-1]
  # The gradient of b contracts over M, so one operand must be written out transposed. Transpose
  # whichever is cheaper: for a dense layer that is the activations (M x K); for attention, where
  # M x N is a T x S score matrix, it is q or the values plus the small result.
  if b_transposed:  # out = a b^T: da = g b; db = g^T a = (a^T g)^T
    da = _dot(g_c, b_c, -2)
    if m * n <= m * k + k * n:
      db = _dot(_swap_last(g_c), a_c, -2)
    else:
      db = _swap_last(lax.optimization_barrier(_dot(_swap_last(a_c), g_c, -2)))
  else:             # out = a b: da = g b^T; db = a^T g = (g^T a)^T
    da = _dot(g_c, b_c, -1)
    if m * k <= m * n + n * k:
      db = _dot(_swap_last(a_c), g_c, -2)
    else:
      db = _swap_last(lax.optimization_barrier(_dot(_swap_last(g_c), a_c, -2)))
  return da.astype(za.dtype), db.astype(zb.dtype)


_product.defvjp(_product_fwd, _product_bwd)


def matmul(a, b, dtype=jnp.float32):
  """a [..., M, K] @ b [..., K, N], or a [..., K] @ b [K, N] (a weight matrix); f32 result."""
  if b.ndim == 2 and a.ndim != 2:  # a weight matrix: fold a's leading axes into one row axis
    return _product(a.reshape(-1, a.shape[-1]), b, False, dtype).reshape(*a.shape[:-1], b.shape[-1])
  return _product(a, b, False, dtype)


def matmul_nt(a, b, dtype=jnp.float32):
  """a [..., M, K] @ b[..., N, K]^T: attention scores q k^T without transposing k; f32 result."""
  return _product(a, b, True, dtype)
