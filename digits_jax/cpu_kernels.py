"""Pooling and a convolution written for XLA:CPU, the models' building blocks.

The same functions as Flax's `nn.max_pool` and `lax.conv_general_dilated`
(tests/test_models.py compares values and gradients), in forms that XLA:CPU
compiles faster or correctly: the models take `conv_with_cpu_weight_gradient`
as a parameter, where `platform.py` says so; `max_pool_2x2` is their pooling
everywhere (as fast as `nn.max_pool` elsewhere). Measurements: docs/performance.md.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp


def max_pool_2x2(x):
  """2x2 max pooling, stride 2 (Keras' MaxPooling2D(2, 2): odd edges dropped).

  The same function as `nn.max_pool(x, (2, 2), (2, 2))`, written as three
  elementwise choices between the window's four values: XLA:CPU
  differentiates `reduce_window` through select-and-scatter, which measured
  about 4x slower here. Not as `reshape(...).max()` either: the gradient JAX
  derives for a max compares the input with the max for equality, XLA may
  recompute the two in different fusions with different rounding, and then
  the comparison fails and the gradient is lost (measured: wrong gradients
  for the whole improved LeNet under the Eigen convolutions of
  xla_options.py). Here the gradient follows the same comparisons as the
  value, and goes to one element of a window (the first of tied ones, as in
  Keras and PyTorch).
  """
  n, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
  larger = lambda a, b: jnp.where(b > a, b, a)
  top = larger(x[:, :, 0, :, 0], x[:, :, 0, :, 1])
  bottom = larger(x[:, :, 1, :, 0], x[:, :, 1, :, 1])
  return larger(top, bottom)


def _transposed_apart(x, token):
  """[N, H, W, C] -> [C, H, W, N], computed where XLA cannot fuse into it.

  XLA:CPU fuses the elementwise ops that produce `x` (a bias and a ReLU)
  into this transpose, and the fused loop runs about 5x slower than the
  transpose alone (measured on [128, 24, 24, 32]: ~11 ms against ~2.3 ms).
  A conditional's branches are computations of their own, so the transpose
  in one reads `x` as the buffer the forward pass already wrote.
  `lax.optimization_barrier` does not do it: XLA:CPU removes it before
  fusion. Both branches are the transpose; `token`, any traced scalar the
  compiler cannot fold, only keeps the conditional in the program.
  """
  transpose = lambda v: jnp.transpose(v, (3, 1, 2, 0))
  return lax.cond(token == token, transpose, transpose, x)


def _conv_nhwc(x, kernel, padding, precision):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_transposed_weight_gradient(x, kernel, padding, precision):
  return _conv_nhwc(x, kernel, padding, precision)


def _conv_forward(x, kernel, padding, precision):
  return _conv_nhwc(x, kernel, padding, precision), (x, kernel)


def _conv_backward(padding, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
      lambda x: _conv_nhwc(x, kernel, padding, precision), x)
  dx, = input_vjp(dy)
  # dW[i, j, c, o] = sum over n, h, w of x[n, h + i, w + j, c] dy[n, h, w, o]:
  # a convolution of x as [C, H, W, N] (N contracted) with dy as its kernel.
  dw = lax.conv_general_dilated(
      _transposed_apart(x, kernel[0, 0, 0, 0]), dy, (1, 1), padding,
      dimension_numbers=('NHWC', 'IHWO', 'NHWC'), precision=precision)
  return dx, jnp.transpose(dw, (1, 2, 0, 3))


_conv_transposed_weight_gradient.defvjp(_conv_forward, _conv_backward)


def conv_with_cpu_weight_gradient(lhs, rhs, window_strides, padding,
                                  lhs_dilation=None, rhs_dilation=None,
                                  dimension_numbers=None,
                                  feature_group_count=1, precision=None,
                                  **options):
  """`lax.conv_general_dilated` (Flax's `conv_general_dilated` hook) with a
  weight gradient that XLA:CPU computes faster.

  XLA derives the weight gradient of an NHWC convolution as a convolution
  over the input transposed to [C, H, W, N], and XLA:CPU fuses the input's
  producer into that transpose (`_transposed_apart` says what that costs).
  Here the backward pass transposes the input on its own; the values are
  the same. Only stride-1, undilated, ungrouped NHWC/HWIO convolutions
  (the models' own) take this path; others are plain
  `lax.conv_general_dilated`, as are those called with any of its other
  `options` set (NNX's `nnx.Conv` passes `out_sharding=None`).
  """
  options = {k: v for k, v in options.items() if v is not None}
  plain = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision,
      **options)
  if lhs.ndim != 4 or options:
    return plain()
  nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                    ('NHWC', 'HWIO', 'NHWC'))
  ones = (1, 1)
  if (tuple(window_strides) != ones or tuple(lhs_dilation or ones) != ones
      or tuple(rhs_dilation or ones) != ones or feature_group_count != 1
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                    dimension_numbers) != nhwc):
    return plain()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1),
                                  padding)
  padding = tuple(tuple(pair) for pair in padding)
  return _conv_transposed_weight_gradient(lhs, rhs, padding, precision)
