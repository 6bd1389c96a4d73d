"""The classic LeNet-5, the article's baseline (98.74% there): two 5x5
convolutions of 6 and 16 filters, each with a ReLU and 2x2 max pooling, then
Dense 120/84 and the logits. Glorot-uniform kernels and zero biases (Keras'
defaults), 'valid' convolutions, no BatchNorm and no dropout.

Input: standardized digits [N, H, W, C] (28x28 or the article's 32x32).
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from digits_jax import cpu_kernels

# The kernels L2 applies to (config.l2): the article regularizes two kernels
# of its improved LeNet; LeNet-5 has the same names for its two convolutions.
L2_REGULARIZED = ('conv1', 'conv2')


class LeNet5(nn.Module):
  num_classes: int = 10
  dtype: Any = jnp.float32
  # XLA:CPU's faster weight gradient for conv2 (platform.py), or None.
  conv_general_dilated: Callable | None = None

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


Model = LeNet5
