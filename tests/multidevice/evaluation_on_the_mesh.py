"""With 8 devices: every member's validation logits from the Evaluator on
the run's mesh (a single model over 8 devices, pmap's state, a sweep of 4
on members x data meshes, vmapped and side by side) against the same
program on one device. Run by eight_devices.py for
tests/test_eight_devices.py."""

import dataclasses

import jax
import numpy as np

from digits_jax import config_checks
from digits_jax import evaluation
from digits_jax import members as members_lib
from digits_jax import parallel
from digits_jax import platform as platform_lib
from digits_jax import train
from helpers import MNIST_DATA

# 203 images: not a multiple of the eval batch nor of the 8 devices.
NUM_IMAGES, EVAL_BATCH = 203, 50


def _logits(config, members, devices, platform, images):
  program = train.build_program(config, members, devices, platform,
                                MNIST_DATA)
  state = program.init_state(members, members.keys()[0])
  # Non-trivial BatchNorm statistics, so that a wrong member's show.
  state = state.replace(batch_stats=jax.tree.map(
      lambda s: s + 0.1 * np.arange(s.size, dtype=np.float32).reshape(
          s.shape) / s.size, state.batch_stats))
  on_devices = (devices.replicate(state) if devices.mode == 'pmap'
                else devices.place_state(state))
  model = train.recipe.build(config, platform, MNIST_DATA)[0]
  evaluator = evaluation.Evaluator(model, program.preprocess, EVAL_BATCH,
                                   platform, devices, members)
  return evaluator.member_logits(on_devices, images)


def report() -> dict:
  images = np.random.default_rng(0).integers(0, 256, (NUM_IMAGES, 28, 28),
                                             np.uint8)
  config = config_checks.load_config('tiny')
  config.update(input_size=28, batch_size=64)
  results = {}
  single = members_lib.resolve(config)[1]
  platform = platform_lib.current(config.conv_impl)
  one = _logits(config, single, parallel.DataParallel(
      'mesh', tuple(jax.devices()[:1])), platform, images)
  for mode in ('mesh', 'pmap'):
    got = _logits(config, single, parallel.DataParallel(
        mode, tuple(jax.devices())), platform, images)
    results[f'single_{mode}'] = {'shape': list(got.shape),
                                 'max_difference': float(np.abs(
                                     got - one).max())}
  config.sweep = 'learning_rate=1e-3,2e-3,3e-3,4e-3 seed=0,1,2,3'
  config.sweep_mode = 'zip'
  config, sweep = members_lib.resolve(config)
  one = _logits(config, sweep, parallel.DataParallel(
      'mesh', tuple(jax.devices()[:1]), member_devices=1), platform, images)
  for vmapped in (False, True):
    form = dataclasses.replace(platform, member_vmap=vmapped)
    for member_devices in (4, 2, 1):
      got = _logits(config, sweep, parallel.DataParallel(
          'mesh', tuple(jax.devices()), member_devices=member_devices),
                    form, images)
      results[f'{"vmap" if vmapped else "side_by_side"}_{member_devices}'] = {
          'shape': list(got.shape),
          'max_difference': float(np.abs(got - one).max()),
          'members_differ': bool(np.abs(got[0] - got[1]).max() > 1e-3)}
  return results
