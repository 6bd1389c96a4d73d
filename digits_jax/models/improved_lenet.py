"""The article's improved LeNet-5 (99.41% there), in Flax Linen.

Layer for layer the article's Keras model: two blocks of
Conv-Conv-BatchNorm-ReLU-MaxPool-Dropout (32 and 64 filters), Dense
256/128/84 with BatchNorm, dropout, the logits. Glorot-uniform kernels and
zero biases (Keras' defaults), BatchNorm with Keras' momentum 0.99 and
epsilon 1e-3, 'valid' convolutions. It returns logits; the softmax lives in
the loss and in `predict`.

Input: standardized digits [N, H, W, C], 28x28 or the article's 32x32
(configs/improved.py pads MNIST's 28x28 by 2 pixels).
Config: `config.dropout_rate` (sweepable: a traced rate).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from digits_jax import cpu_kernels


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


Model = ImprovedLeNet
