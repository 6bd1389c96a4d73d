r"""Where a convolution's time goes: forward, input and weight gradients.

Times the three parts of one 'VALID' NHWC convolution, XLA's plain
`lax.conv_general_dilated` against digits_jax/conv.py's formulation, side by
side in one process, and prints ms and GFLOP/s for each.

  python scripts/conv_profile.py --batch=128 --size=24 --channels=32 --kernel=5
"""

import os
import sys

from absl import app
from absl import flags
import jax
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import timing  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import conv  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size.')
_SIZE = flags.DEFINE_integer('size', 28, 'Input height and width.')
_CHANNELS = flags.DEFINE_integer('channels', 32, 'Input channels.')
_FEATURES = flags.DEFINE_integer('features', 32, 'Output channels.')
_KERNEL = flags.DEFINE_integer('kernel', 5, 'Kernel size.')
_REPEATS = flags.DEFINE_integer('repeats', 9, 'Timed calls; median shown.')


def _time(f, *args) -> float:
  return timing.median_seconds(f, *args, repeats=_REPEATS.value)


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

  def plain(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  print(f'conv {k}x{k}, {c}->{o} channels, input {n}x{h}x{h}, '
        f'{flops / 1e9:.2f} GFLOP per pass, {jax.devices()[0].device_kind}')
  print(f'{"":10s}{"xla ms":>10s}{"GFLOP/s":>9s}{"fast ms":>10s}{"GFLOP/s":>9s}')
  for part in ('forward', 'input grad', 'weight grad'):
    row = []
    for fn in (plain, conv.conv_valid_nhwc):
      if part == 'forward':
        seconds = _time(fn, x, w)
      else:
        index = 0 if part == 'input grad' else 1
        # x and w are arguments, not constants: XLA would fold work on
        # constants into the compiled program and flatter the timing.
        seconds = _time(
            lambda x, w, dy, fn=fn, i=index: jax.vjp(fn, x, w)[1](dy)[i],
            x, w, dy)
      row += [seconds * 1e3, flops / seconds / 1e9]
    print(f'{part:10s}{row[0]:10.1f}{row[1]:9.1f}{row[2]:10.1f}{row[3]:9.1f}')


if __name__ == '__main__':
  app.run(main)
