"""LeNet-5 and the article's improved LeNet-5, in Flax.

Both follow the article's Keras models layer for layer: Glorot-uniform kernels
and zero biases (Keras' defaults), BatchNorm with Keras' momentum 0.99 and
epsilon 1e-3, 'valid' convolutions. They return logits; the softmax lives in
the loss and in `predict`.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from digits_jax import cpu_kernels
from digits_jax.errors import UserError


class Dropout(nn.Module):
  """`nn.Dropout` whose mask, under pmap (`axis_name`), is drawn for the
  global batch and sliced: the same mask as on one device. `rate` may be
  traced (a sweep's members); only a Python 0 skips the mask."""
  rate: Any
  deterministic: bool
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x):
    if self.deterministic or (isinstance(self.rate, (int, float))
                              and self.rate == 0):
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
  `conv_general_dilated` (None: lax's) computes conv2-4, e.g.
  `cpu_kernels.conv_with_cpu_weight_gradient` on XLA:CPU. Not conv1: its
  one-channel input is cheap to transpose, and there the CPU form measured
  slower.
  """
  num_classes: int = 10
  dropout_rate: Any = 0.25  # A float, or traced in a sweep.
  dtype: Any = jnp.float32
  axis_name: str | None = None
  conv_general_dilated: Callable | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    plain_conv = functools.partial(
        nn.Conv, padding='VALID', dtype=self.dtype,
        kernel_init=nn.initializers.glorot_uniform())
    conv = functools.partial(plain_conv,
                             conv_general_dilated=self.conv_general_dilated)
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype,
                              kernel_init=nn.initializers.glorot_uniform())
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.99, epsilon=1e-3, dtype=self.dtype,
                             axis_name=self.axis_name)
    dropout = functools.partial(Dropout, rate=self.dropout_rate,
                                deterministic=not train,
                                axis_name=self.axis_name)
    pool = cpu_kernels.max_pool_2x2

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
  conv_general_dilated: Callable | None = None  # As ImprovedLeNet's, conv2.

  @nn.compact
  def __call__(self, x, *, train: bool):
    del train
    plain_conv = functools.partial(
        nn.Conv, padding='VALID', dtype=self.dtype,
        kernel_init=nn.initializers.glorot_uniform())
    conv = functools.partial(plain_conv,
                             conv_general_dilated=self.conv_general_dilated)
    dense = functools.partial(nn.Dense, dtype=self.dtype,
                              kernel_init=nn.initializers.glorot_uniform())
    pool = cpu_kernels.max_pool_2x2
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
