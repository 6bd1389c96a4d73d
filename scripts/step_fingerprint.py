r"""A fingerprint of the program the trainer compiles: the hash of the lowered
train dispatch (the platform's steps per dispatch, scanned as training scans
them) for a config, and of the first epoch's batch order.

Two commits that print the same fingerprint train with the same program on
the same data order, so a refactor or an option that is off by default
cannot have changed the trainer's speed or results. Run it in each tree:

  python scripts/step_fingerprint.py --config=configs/fast.py
  git worktree add /tmp/before REV && (cd /tmp/before && \
      python /path/to/scripts/step_fingerprint.py --config=configs/fast.py)
"""

import argparse
import functools
import hashlib
import os
import runpy
import sys

# The tree it runs in (the current directory), not the script's own.
sys.path.insert(0, os.getcwd())

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import recipe  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import steps  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_EXAMPLES = 1024


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/fast.py')
  args = parser.parse_args()
  config = runpy.run_path(args.config)['get_config']()
  config, members = members_lib.resolve(config)
  platform = platform_lib.current(config.conv_impl)
  model, tx = recipe.build(config, platform, total_steps=100,
                           traced_keys=members.traced_keys)
  preprocess = recipe.preprocessing(
      config, {'pixel_mean': 33.3, 'pixel_std': 78.6})
  init_key, shuffle_key, train_key = members.keys()
  state = members.create_train_state(model, tx, init_key, config.input_size)
  step_fn = members.train_step(
      recipe.train_step_fn(config, model, tx, preprocess, total_steps=100,
                           traced_keys=members.traced_keys),
      platform.vmap_members)
  dispatch = platform.steps_per_dispatch(config.steps_per_dispatch,
                                         NUM_EXAMPLES // config.batch_size,
                                         config.num_models)
  scan = jax.jit(functools.partial(steps.scan_train_steps, step_fn,
                                   unroll=platform.unroll_scan))
  batches = members.epoch_batches(shuffle_key, 0, NUM_EXAMPLES,
                                  config.batch_size)[:dispatch]
  images = np.zeros((NUM_EXAMPLES, 28, 28), np.uint8)
  labels = np.zeros(NUM_EXAMPLES, np.int32)
  program = scan.lower(state, images, labels, batches, train_key).as_text()
  print(f'{args.config}: program '
        f'{hashlib.sha256(program.encode()).hexdigest()[:16]} '
        f'({dispatch} steps, {len(program)} characters), batch order '
        f'{hashlib.sha256(np.asarray(batches).tobytes()).hexdigest()[:16]}')


if __name__ == '__main__':
  main()
