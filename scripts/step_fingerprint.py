r"""A fingerprint of the program the trainer compiles: the hash of the lowered
train dispatch (train.build_program's, the platform's steps per dispatch,
lowered without the mesh's shardings so that it does not depend on the
machine's devices) for a config, and of the first epoch's batch order.

Two commits that print the same fingerprint (and the same convolution
library, which the platform chooses for the CPU: platform.py) train with the
same program on the same data order, so a refactor or an option that is off by default
cannot have changed the trainer's speed or results. Where the program's
text changes but its values should not (operations reordered),
`--values` also runs that dispatch on noise from the initial state and
prints a hash of the state it ends with: equal hashes, the same values bit
for bit. Run it in each tree:

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
  parser.add_argument('--values', action='store_true',
                      help='also run the dispatch on noise and hash the '
                      'state it ends with')
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
  text = scan.lower(state, images, labels, batches, train_key).as_text()
  values = ''
  if args.values:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, images.shape, np.uint8)
    classes = rng.integers(0, DATA['num_classes'], NUM_EXAMPLES, np.int32)
    after, _ = scan(state, noise, classes, batches, train_key)
    values = ', state after it ' + _hash(
        b''.join(np.asarray(x).tobytes()
                 for x in jax.tree.leaves(jax.device_get(after))))
  # The program's text does not hold the compiler options the platform
  # compiles it with (which library runs the convolutions): named apart.
  library = platform.conv_library or "XLA's default"
  print(f'{args.config}: program {_hash(text.encode())} '
        f'({dispatch} steps, {len(text)} characters), batch order '
        f'{_hash(np.asarray(batches).tobytes())}{values}; compiled with '
        f'{library} convolutions')


def _hash(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:16]


if __name__ == '__main__':
  main()
