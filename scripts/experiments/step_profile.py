r"""Where one training step's time goes: its parts, timed one by one.

Each part is jitted on its own with arguments (not constants, which XLA
would fold), run a few times, and its median time printed; the parts of the
model's backward pass are its layers' forward-and-gradient times.

  python scripts/experiments/step_profile.py --batch=128 --input_size=28

Parts overlap (the step contains the others), so the figures are where to
look, not a sum.
"""

import functools
import os
import sys

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..')))
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import cpu_kernels  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import recipe  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import steps  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_INPUT_SIZE = flags.DEFINE_enum('input_size', '28', ['28', '32'], 'Input.')
_CONV_IMPL = flags.DEFINE_enum('conv_impl', 'auto', platform_lib.CONV_IMPLS,
                               'Convolutions (compiler options).')
_REPEATS = flags.DEFINE_integer('repeats', 9, 'Timed calls; median shown.')


def _ms(f, *args) -> float:
  return timing.median_seconds(
      f, *args, repeats=_REPEATS.value,
      compiler_options=platform_lib.current(
          _CONV_IMPL.value).compiler_options) * 1e3


def _forward_and_gradient(fn, *args) -> tuple[float, float]:
  """Forward, and forward plus the gradients for all arguments given a
  random output gradient (an argument: a loss such as sum(sin(y)) would add
  its own cost, large for the big early activations)."""
  out = jax.eval_shape(fn, *args)
  cotangent = jax.random.normal(jax.random.key(9), out.shape, out.dtype)
  backward = lambda dy, *a: jax.vjp(fn, *a)[1](dy)
  return _ms(fn, *args), _ms(backward, cotangent, *args)


def main(argv):
  del argv
  batch, size = _BATCH.value, int(_INPUT_SIZE.value)
  config = config_checks.load_config('improved')
  config.input_size, config.conv_impl = size, _CONV_IMPL.value
  data = {'image_shape': [28, 28, 1], 'num_classes': 10,
          'pixel_mean': 33.3, 'pixel_std': 78.6}
  model, tx = recipe.build(config, platform_lib.current(config.conv_impl),
                           data)
  preprocess = recipe.preprocessing(config, data)
  state = steps.create_train_state(model, tx, jax.random.key(0))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (batch, 28, 28), np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, batch, np.int32))
  key = jax.random.key(1)
  step = recipe.train_step_fn(config, model, tx, preprocess)
  x = preprocess(images)

  def loss(params):
    logits, _ = model.apply_train(params, state.batch_stats, x, key)
    return steps.cross_entropy(logits, labels).mean()

  grads = jax.grad(loss)(state.params)
  rows = [
      ('train step (all of it)',
       _ms(lambda s: step(s, {'image': images, 'label': labels}, key), state)),
      ('  pad, augment, standardize',
       _ms(lambda k: preprocess(images, k), key)),
      ('  model forward + loss', _ms(loss, state.params)),
      ('  model forward + backward', _ms(jax.grad(loss), state.params)),
      ('  optimizer update',
       _ms(lambda g, o, p: tx.update(g, o, p), grads, state.opt_state,
           state.params)),
  ]
  print(f'train step parts, batch {batch}, input {size}x{size}, conv_impl '
        f'{config.conv_impl}, {jax.devices()[0].device_kind}')
  for name, ms in rows:
    print(f'{name:42s}{ms:9.1f} ms')

  conv = functools.partial(jax.lax.conv_general_dilated,
                           window_strides=(1, 1), padding='VALID',
                           dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  side1 = size - 8
  side2 = side1 // 2
  flat = 64 * ((side2 - 4) // 2) ** 2  # fc1's input.
  norm = nn.BatchNorm(use_running_average=False, momentum=0.99, epsilon=1e-3)
  norm_vars = norm.init(jax.random.key(0), jnp.zeros((1, side1, side1, 32)))
  normal = lambda *shape: jax.random.normal(jax.random.key(len(shape)), shape)
  layers = [
      ('conv1 5x5 1->32', conv, normal(batch, size, size, 1),
       normal(5, 5, 1, 32)),
      ('conv2 5x5 32->32', conv, normal(batch, size - 4, size - 4, 32),
       normal(5, 5, 32, 32)),
      ('conv3 3x3 32->64', conv, normal(batch, side2, side2, 32),
       normal(3, 3, 32, 64)),
      ('conv4 3x3 64->64', conv, normal(batch, side2 - 2, side2 - 2, 64),
       normal(3, 3, 64, 64)),
      ('bn2 (BatchNorm, training)',
       lambda v: norm.apply(norm_vars, v, mutable=['batch_stats'])[0],
       normal(batch, side1, side1, 32)),
      ('relu + max pool 2x2', lambda v: cpu_kernels.max_pool_2x2(nn.relu(v)),
       normal(batch, side1, side1, 32)),
      ('fc1 dense', jnp.matmul, normal(batch, flat), normal(flat, 256)),
  ]
  print(f'{"layer (gradients for all inputs)":42s}{"fwd ms":>9s}'
        f'{"fwd+bwd ms":>12s}')
  for name, fn, *args in layers:
    forward, both = _forward_and_gradient(fn, *args)
    print(f'{name:42s}{forward:9.1f}{both:12.1f}')


if __name__ == '__main__':
  app.run(main)
