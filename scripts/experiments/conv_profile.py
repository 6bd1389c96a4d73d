r"""Where a convolution's time goes: forward, input and weight gradients.

Times the three parts of one 'VALID' NHWC convolution compiled with XLA's
default options, with YNNPACK off altogether, and with
digits_jax/xla_options.py's 'eigen' options, side by side in one process,
and prints ms and GFLOP/s for each. A last row times BatchNorm's reductions
(the sum and the sum of squares over batch and space, per channel) of the
convolution's input the same three ways, and their error against float64.

  python scripts/experiments/conv_profile.py --batch=128 --size=24 --channels=32 --kernel=5
"""

import os
import sys

from absl import app
from absl import flags
import jax
from jax import lax
import numpy as np

sys.path.insert(0, os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..')))
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import xla_options  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size.')
_SIZE = flags.DEFINE_integer('size', 28, 'Input height and width.')
_CHANNELS = flags.DEFINE_integer('channels', 32, 'Input channels.')
_FEATURES = flags.DEFINE_integer('features', 32, 'Output channels.')
_KERNEL = flags.DEFINE_integer('kernel', 5, 'Kernel size.')
_REPEATS = flags.DEFINE_integer('repeats', 9, 'Timed calls; median shown.')


def main(argv):
  del argv
  n, h, c, k = _BATCH.value, _SIZE.value, _CHANNELS.value, _KERNEL.value
  o = _FEATURES.value
  out = h - k + 1
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (n, h, h, c))
  w = jax.random.normal(keys[1], (k, k, c, o))
  dy = jax.random.normal(keys[2], (n, out, out, o))
  flops = 2 * n * out * out * k * k * c * o

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  # x and w are arguments, not constants: XLA would fold work on constants
  # into the compiled program and flatter the timing.
  parts = {
      'forward': (conv, (x, w)),
      'input grad': (lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[0],
                     (x, w, dy)),
      'weight grad': (lambda x, w, dy: jax.vjp(conv, x, w)[1](dy)[1],
                      (x, w, dy)),
  }
  options = {'xla': None,
             'no ynn': xla_options.EIGEN_ONLY,
             'eigen': xla_options.cpu_eigen_convolutions()}
  print(f'conv {k}x{k}, {c}->{o} channels, input {n}x{h}x{h}, '
        f'{flops / 1e9:.2f} GFLOP per pass, {jax.devices()[0].device_kind}')
  print(f'{"":12s}' + ''.join(f'{name + " ms":>10s}{"GFLOP/s":>9s}'
                               for name in options))
  for part, (fn, args) in parts.items():
    row = ''
    for compiler_options in options.values():
      seconds = timing.median_seconds(fn, *args, repeats=_REPEATS.value,
                                      compiler_options=compiler_options)
      row += f'{seconds * 1e3:10.1f}{flops / seconds / 1e9:9.1f}'
    print(f'{part:12s}{row}')

  # Not FLOP-bound: GFLOP/s is left out, the error against float64 shown.
  def channel_sums(x):
    return x.sum((0, 1, 2)), (x * x).sum((0, 1, 2))

  exact = [np.asarray(x, np.float64).sum((0, 1, 2)),
           (np.asarray(x, np.float64) ** 2).sum((0, 1, 2))]
  row = ''
  for compiler_options in options.values():
    seconds = timing.median_seconds(channel_sums, x, repeats=_REPEATS.value,
                                    compiler_options=compiler_options)
    sums = jax.jit(channel_sums, compiler_options=compiler_options)(x)
    error = max(float(np.abs(got - want).max() / np.abs(want).max())
                for got, want in zip(sums, exact))
    row += f'{seconds * 1e3:10.2f}{error:9.0e}'
  print(f'{"sums of x,x²":12s}{row}  (ms, relative error)')


if __name__ == '__main__':
  app.run(main)
