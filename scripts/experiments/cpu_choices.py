r"""Each of digits_jax/platform.py's CPU choices against its alternatives,
in the whole train step, on the JAX this runs on.

The trainer's program (scripts/benchmark.py's `trainer_path`: the dataset
on the device, `--steps` steps per dispatch, donated state) built under
several sets of choices, timed in alternating windows in one process (a
change in the machine's speed touches every set alike), median images/s
and the ratio to the first set (the platform's own choices today):

  options     which library runs XLA:CPU's convolutions and reductions:
              'ynn-reduce' (YNNPACK the reductions, Eigen the convolutions:
              xla_options.py), 'ynn-conv' (YNNPACK both), 'none' (YNNPACK
              nothing), 'xla' (XLA's defaults), 'onednn' (oneDNN the
              convolutions and matmuls, YNNPACK nothing), 'onednn-ynn-reduce'
              (and YNNPACK the reductions)
  vjp         the models' convolutions with cpu_kernels'
              weight gradient (transposed apart), or as JAX derives it
  unroll      the scanned steps unrolled, or a while loop

  python scripts/experiments/cpu_choices.py --batch=128 --input_size=28 --steps=8
"""

import dataclasses
import os
import statistics
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..')))
sys.path.insert(0, os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..')))
import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import xla_options  # pylint: disable=g-import-not-at-top,wrong-import-position

_SETS = flags.DEFINE_list(
    'sets', ['auto', 'ynn-reduce/vjp/unroll', 'ynn-reduce/plain/unroll',
             'ynn-reduce/vjp/rolled', 'ynn-conv/vjp/unroll',
             'ynn-conv/plain/unroll', 'none/vjp/unroll', 'xla/plain/unroll',
             'xla/vjp/unroll'],
    'Sets of choices, OPTIONS/VJP/UNROLL; the first is the baseline '
    '("auto": platform.py\'s own for this backend).')

_YNN = 'xla_cpu_experimental_ynn_fusion_type'
OPTIONS = {
    'ynn-reduce': xla_options.EIGEN_CONVOLUTIONS,
    'ynn-conv': {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,'
                       'LIBRARY_FUSION_TYPE_REDUCE'},
    'none': xla_options.EIGEN_ONLY,
    'xla': None,
    # oneDNN (the library of PyTorch's CPU convolutions) for XLA:CPU's
    # convolutions and matmuls, as custom calls; YNNPACK nothing, or the
    # reductions.
    'onednn': {'xla_cpu_use_onednn': True,
               'xla_cpu_experimental_onednn_custom_call': True, _YNN: ''},
    'onednn-ynn-reduce': {'xla_cpu_use_onednn': True,
                          'xla_cpu_experimental_onednn_custom_call': True,
                          _YNN: 'LIBRARY_FUSION_TYPE_REDUCE'},
}


@dataclasses.dataclass(frozen=True)
class Choices(platform_lib.Platform):
  """A CPU platform whose choices are given rather than derived."""
  options: str = 'ynn-reduce'
  weight_vjp: bool = True
  unroll: bool = True

  @property
  def compiler_options(self):
    """OPTIONS[name], or ynn+TYPE+TYPE...: YNNPACK takes the reductions
    and the fusion types named (DOT, INDIVIDUAL_DOT, ELTWISE, ...); either
    followed by @flag=value@... for more XLA options."""
    name, *extra = self.options.split('@')
    name, *types = name.split('+')
    options = dict(OPTIONS[name] or {}) if not types else {
        _YNN: ','.join(f'LIBRARY_FUSION_TYPE_{t}' for t in ['REDUCE', *types])}
    options.update(item.split('=', 1) for item in extra)
    return options or None

  @property
  def cpu_weight_gradients(self) -> bool:
    return self.weight_vjp

  @property
  def unroll_scan(self) -> bool:
    return self.unroll


def parse(name: str) -> platform_lib.Platform:
  if name == 'auto':
    return platform_lib.current()
  options, vjp, unroll = name.split('/')
  return Choices('cpu', options=options, weight_vjp=vjp == 'vjp',
                 unroll=unroll == 'unroll')


def main(argv):
  del argv
  config = config_checks.load_config('improved')
  config.input_size = int(benchmark._INPUT_SIZE.value)  # pylint: disable=protected-access
  config.compute_dtype = benchmark._DTYPE.value  # pylint: disable=protected-access
  batch, steps = benchmark._BATCH.value, benchmark._STEPS.value  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (benchmark.NUM_IMAGES, 28, 28), np.uint8)
  labels = rng.integers(0, 10, benchmark.NUM_IMAGES, np.int32)
  paths = {name: benchmark.trainer_path(config, images, labels, batch, steps,
                                        platform=parse(name))
           for name in _SETS.value}
  for _ in range(benchmark._WINDOWS.value):  # pylint: disable=protected-access
    for path in paths.values():
      path.times.append(path.window())
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}, input '
        f'{config.input_size}, batch {batch}, {steps} steps per dispatch, '
        f'{config.compute_dtype}, {os.cpu_count()} CPUs')
  base = None
  for name, path in paths.items():
    rate = path.steps * batch / statistics.median(path.times)
    base = base or rate
    print(f'{name:26s}{rate:9.1f} images/s{rate / base:7.3f}'
          f'{path.compile_s:7.1f} s compile')


if __name__ == '__main__':
  app.run(main)
