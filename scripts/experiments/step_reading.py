r"""Which digits_jax files and functions a training step's code runs through:
the program of configs/fast.py built and traced (lowered), in the tree of
the current directory, so that two commits compare:

  python scripts/experiments/step_reading.py
  (cd /tmp/before && python /path/to/scripts/experiments/step_reading.py)

A reader following one step opens at least these (and main.py and the
loop in train.py, which run no step code).
"""

import os
import runpy
import sys

# The tree it runs in (the current directory), not the script's own.
sys.path.insert(0, os.getcwd())

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA = {'image_shape': [28, 28, 1], 'num_classes': 10, 'pixel_mean': 33.3,
        'pixel_std': 78.6}


def main():
  config = runpy.run_path('configs/fast.py')['get_config']()
  config, members = members_lib.resolve(config)
  platform = platform_lib.current(config.conv_impl)
  package = os.path.join(os.getcwd(), 'digits_jax')
  seen = set()

  def record(frame, event, arg):
    del arg
    code = frame.f_code
    if event == 'call' and code.co_filename.startswith(package):
      seen.add((os.path.relpath(code.co_filename), code.co_qualname))

  sys.setprofile(record)
  devices = parallel.create(config, members.num_models)
  init_key, shuffle_key, train_key = members.keys()
  program = train.build_program(config, members, devices, platform, DATA, 100)
  batches = members.epoch_batches(shuffle_key, 0, 1024, config.batch_size)
  program.update.lower(
      devices.place_state(program.init_state(members, init_key)),
      np.zeros((1024, 28, 28), np.uint8), np.zeros(1024, np.int32),
      devices.shard_batch_indices(batches[:1]), train_key)
  sys.setprofile(None)
  files = sorted({f for f, _ in seen})
  print(f'{len(files)} files, {len(seen)} functions (lambdas and module '
        'bodies included)')
  for name in files:
    print(f'  {name}: ' + ', '.join(sorted(q for f, q in seen if f == name)))


if __name__ == '__main__':
  main()
