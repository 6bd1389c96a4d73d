r"""A fingerprint of the program the trainer compiles: the hash of the lowered
train dispatch (train.build_program's, the platform's steps per dispatch,
lowered without the mesh's shardings so that it does not depend on the
machine's devices) for a config, and of the first epoch's batch order.

Two commits that print the same fingerprint train with the same program on
the same data order, so a refactor or an option that is off by default
cannot have changed the trainer's speed or results. Run it in each tree:

  python scripts/step_fingerprint.py --config=configs/fast.py
  git worktree add /tmp/before REV && (cd /tmp/before && \
      python /path/to/scripts/step_fingerprint.py --config=configs/fast.py)
"""

import argparse
import hashlib
import os
import runpy
import sys

# The tree it runs in (the current directory), not the script's own.
sys.path.insert(0, os.getcwd())

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_EXAMPLES = 1024
# MNIST's shape and classes, and pixel statistics near its own.
DATA = {'image_shape': [28, 28, 1], 'num_classes': 10, 'pixel_mean': 33.3,
        'pixel_std': 78.6}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/fast.py')
  args = parser.parse_args()
  config = runpy.run_path(args.config)['get_config']()
  config, members = members_lib.resolve(config)
  platform = platform_lib.current(config.conv_impl)
  program = train.build_program(
      config, members, parallel.create(config, members.num_models),
      platform, DATA, total_steps=100)
  init_key, shuffle_key, train_key = members.keys()
  state = program.init_state(members, init_key)
  dispatch = platform.steps_per_dispatch(config.steps_per_dispatch,
                                         NUM_EXAMPLES // config.batch_size,
                                         config.num_models)
  scan = jax.jit(program.train_steps)
  batches = members.epoch_batches(shuffle_key, 0, NUM_EXAMPLES,
                                  config.batch_size)[:dispatch]
  images = np.zeros((NUM_EXAMPLES, *DATA['image_shape'][:2]), np.uint8)
  labels = np.zeros(NUM_EXAMPLES, np.int32)
  program = scan.lower(state, images, labels, batches, train_key).as_text()
  print(f'{args.config}: program '
        f'{hashlib.sha256(program.encode()).hexdigest()[:16]} '
        f'({dispatch} steps, {len(program)} characters), batch order '
        f'{hashlib.sha256(np.asarray(batches).tobytes()).hexdigest()[:16]}')


if __name__ == '__main__':
  main()
