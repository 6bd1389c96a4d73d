"""A deeper 3x3 CNN in Flax NNX: the kind of single model behind the best
honest MNIST results (Chris Deotte's "How to choose CNN architecture",
Kaggle 2018: 99.64% averaged over many runs of this network).

Three stages of ReLU convolutions, each followed by BatchNorm: two 3x3
convolutions then a 5x5 one of stride 2 ('same'), with 32 and 64 filters,
each stage ending in dropout; then a 4x4 convolution of 128 filters,
dropout and the logits. Pooling is learned (the strided convolutions);
327k parameters at 28x28. Glorot-uniform kernels and zero biases (Keras'
defaults, as the original), BatchNorm with Keras' momentum 0.99 and epsilon
1e-3.

Input: standardized digits [N, H, W, C]: 28x28 as MNIST is (configs/
deep_cnn.py), or 32x32.
Config: `config.dropout_rate` (0.4 in the original; a Python number here,
so it is swept in separate runs, not as a sweep's traced value).
"""

import functools
from typing import Any, Callable

from flax import nnx
from jax import lax
import jax.numpy as jnp

# No L2 in the original recipe (config.l2 = 0); none named here.
L2_REGULARIZED = ()


def _stage_size(size: int) -> int:
  """The side after a stage: two 3x3 'valid' convolutions, then a 5x5 of
  stride 2 'same'."""
  return -(-(size - 4) // 2)


class DeepCNN(nnx.Module):

  def __init__(self, *, input_shape: tuple, num_classes: int = 10,
               dropout_rate: float = 0.4, dtype: Any = jnp.float32,
               conv_general_dilated: Callable | None = None,
               rngs: nnx.Rngs):
    height, width, channels = input_shape
    conv = functools.partial(
        nnx.Conv, padding='VALID', dtype=dtype,
        kernel_init=nnx.initializers.glorot_uniform(),
        conv_general_dilated=conv_general_dilated or lax.conv_general_dilated,
        rngs=rngs)
    norm = functools.partial(nnx.BatchNorm, momentum=0.99, epsilon=1e-3,
                             dtype=dtype, rngs=rngs)
    self.stages = nnx.List()
    features_in = channels
    for features in (32, 64):
      self.stages.append(nnx.List([
          conv(features_in, features, (3, 3)), norm(features),
          conv(features, features, (3, 3)), norm(features),
          # A strided convolution: the CPU weight-gradient form is for
          # stride 1 (cpu_kernels.py), so XLA's own here.
          nnx.Conv(features, features, (5, 5), strides=2, padding='SAME',
                   dtype=dtype, kernel_init=nnx.initializers.glorot_uniform(),
                   rngs=rngs),
          norm(features)]))
      features_in = features
    side_h, side_w = _stage_size(_stage_size(height)), _stage_size(
        _stage_size(width))
    self.top = conv(64, 128, (4, 4))
    self.top_norm = norm(128)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
    self.logits = nnx.Linear(
        (side_h - 3) * (side_w - 3) * 128, num_classes, dtype=dtype,
        kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs)

  def __call__(self, x):
    for stage in self.stages:
      for conv, norm in zip(stage[::2], stage[1::2]):
        x = norm(nnx.relu(conv(x)))
      x = self.dropout(x)
    x = self.top_norm(nnx.relu(self.top(x)))
    x = self.dropout(x.reshape((x.shape[0], -1)))
    return self.logits(x)


Model = DeepCNN
