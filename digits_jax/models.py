"""LeNet-5 and the article's improved LeNet-5, in Flax.

Both follow the article's Keras models layer for layer: Glorot-uniform kernels
and zero biases (Keras' defaults), BatchNorm with Keras' momentum 0.99 and
epsilon 1e-3, 'valid' convolutions. They return logits; the softmax lives in
the loss and in `predict`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from digits_jax.errors import UserError


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
                                  feature_group_count=1, precision=None):
  """`lax.conv_general_dilated` (Flax's `conv_general_dilated` hook) with a
  weight gradient that XLA:CPU computes faster.

  XLA derives the weight gradient of an NHWC convolution as a convolution
  over the input transposed to [C, H, W, N], and XLA:CPU fuses the input's
  producer into that transpose (`_transposed_apart` says what that costs).
  Here the backward pass transposes the input on its own; the values are
  the same. Only stride-1, undilated, ungrouped NHWC/HWIO convolutions
  (the models' own) take this path; others are plain
  `lax.conv_general_dilated`.
  """
  plain = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)
  if lhs.ndim != 4:
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


class Dropout(nn.Module):
  """`nn.Dropout` whose mask, under pmap (`axis_name`), is drawn for the
  global batch and sliced: the same mask as on one device."""
  rate: float
  deterministic: bool
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x):
    if self.deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    rng = self.make_rng('dropout')
    if self.axis_name is None:
      mask = jax.random.bernoulli(rng, keep, x.shape)
    else:
      local = x.shape[0]
      shards = lax.psum(1, self.axis_name)
      mask = jax.random.bernoulli(rng, keep, (local * shards, *x.shape[1:]))
      mask = lax.dynamic_slice_in_dim(
          mask, lax.axis_index(self.axis_name) * local, local)
    return lax.select(mask, x / keep, jnp.zeros_like(x))


# The two kernels the article regularizes with Keras' l2(5e-4): the first
# convolution of each block (the ones with a bias and a ReLU).
L2_REGULARIZED = ('conv1', 'conv3')


class ImprovedLeNet(nn.Module):
  """Conv-Conv-BN-ReLU-Pool-Dropout twice (32, 64 filters), Dense 256/128/84.

  `axis_name` makes BatchNorm average its batch statistics across devices
  under pmap; under jit over a mesh the batch axis is already global.
  `cpu_weight_gradients` computes the weight gradients of conv2-4 as
  `conv_with_cpu_weight_gradient` does (the same values, faster on XLA:CPU).
  Not conv1's: its one-channel input is cheap to transpose, and there the
  conditional measured slower than the fused transpose.
  """
  num_classes: int = 10
  dropout_rate: float = 0.25
  dtype: Any = jnp.float32
  axis_name: str | None = None
  cpu_weight_gradients: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    plain_conv = functools.partial(
        nn.Conv, padding='VALID', dtype=self.dtype,
        kernel_init=nn.initializers.glorot_uniform())
    conv = functools.partial(plain_conv, conv_general_dilated=(
        conv_with_cpu_weight_gradient if self.cpu_weight_gradients else None))
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                              kernel_init=nn.initializers.glorot_uniform())
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.99, epsilon=1e-3, dtype=self.dtype,
                             axis_name=self.axis_name)
    dropout = functools.partial(Dropout, rate=self.dropout_rate,
                                deterministic=not train,
                                axis_name=self.axis_name)
    pool = max_pool_2x2

    x = nn.relu(plain_conv(32, (5, 5), name='conv1')(x))
    x = conv(32, (5, 5), use_bias=False, name='conv2')(x)
    x = dropout()(pool(nn.relu(norm(name='bn2')(x))))

    x = nn.relu(conv(64, (3, 3), name='conv3')(x))
    x = conv(64, (3, 3), use_bias=False, name='conv4')(x)
    x = dropout()(pool(nn.relu(norm(name='bn4')(x))))

    x = x.reshape((x.shape[0], -1))
    x = nn.relu(norm(name='bn_fc1')(dense(256, name='fc1')(x)))
    x = nn.relu(norm(name='bn_fc2')(dense(128, name='fc2')(x)))
    x = nn.relu(norm(name='bn_fc3')(dense(84, name='fc3')(x)))
    x = dropout()(x)
    x = nn.Dense(self.num_classes, dtype=self.dtype, name='logits',
                 kernel_init=nn.initializers.glorot_uniform())(x)
    return x.astype(jnp.float32)


class LeNet5(nn.Module):
  """The classic LeNet-5 as the article's baseline: 6 and 16 filters, 120/84."""
  num_classes: int = 10
  dtype: Any = jnp.float32
  axis_name: str | None = None  # Unused: no BatchNorm. Kept for one interface.
  cpu_weight_gradients: bool = False  # As ImprovedLeNet's, for conv2.

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    plain_conv = functools.partial(
        nn.Conv, padding='VALID', dtype=self.dtype,
        kernel_init=nn.initializers.glorot_uniform())
    conv = functools.partial(plain_conv, conv_general_dilated=(
        conv_with_cpu_weight_gradient if self.cpu_weight_gradients else None))
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=nn.initializers.glorot_uniform())
    pool = max_pool_2x2
    x = pool(nn.relu(plain_conv(6, (5, 5), name='conv1')(x)))
    x = pool(nn.relu(conv(16, (5, 5), name='conv2')(x)))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(dense(120, name='fc1')(x))
    x = nn.relu(dense(84, name='fc2')(x))
    return dense(self.num_classes, name='logits')(x).astype(jnp.float32)


MODELS = {
    'improved_lenet': ImprovedLeNet,
    'lenet5': LeNet5,
}


def create_model(name: str, **kwargs) -> nn.Module:
  if name not in MODELS:
    raise UserError(f'unknown model {name!r}; choose one of '
                    f'{", ".join(sorted(MODELS))}')
  return MODELS[name](**kwargs)
