"""With 8 devices: trains an ensemble of 4 for a few steps from one state and
batch on 1 device and on 8 devices (members x data meshes of 4x2, 2x4 and
1x8), with the members side by side and vmapped; the largest differences
from one device. Run by eight_devices.py for tests/test_ensemble.py.

The ensemble is a sweep (learning rates, and weight averaging on two of
the members): its members' values and moving averages are leaves of the
state on the member axis, spread over the devices as the rest is."""

import dataclasses

import jax
import numpy as np

from digits_jax import config_checks
from digits_jax import members as members_lib
from digits_jax import parallel
from digits_jax import platform as platform_lib
from digits_jax import train
from helpers import MNIST_DATA, float_drift, max_difference

# Small: vmapped, the grouped convolutions run slowly on XLA:CPU (one
# layout's 2 steps took 49 s at 16 images per member, 9 s at 8).
NUM_MODELS, STEPS, BATCH = 4, 2, 8


def run(devices: parallel.DataParallel, vmapped: bool, images, labels):
  config = config_checks.load_config('tiny')
  config.input_size = 28
  config.sweep = ('learning_rate=1e-3,2e-3,3e-3,4e-3 '
                  'ema_decay=0,0,0.9,0.5 seed=0,1,2,3')
  config.sweep_mode = 'zip'
  config, members = members_lib.resolve(config)
  assert members.num_models == NUM_MODELS
  # Compiled as the trainer compiles for this platform: on the CPU, Eigen's
  # convolutions. (XLA's default CPU convolutions, conv_impl='xla', gave
  # member 3 of the 1x8 layout a loss 5e-3 off after 2 steps on an Intel
  # Xeon with AVX-512, where Eigen's agree to 4e-6: docs/testing.md.)
  platform = dataclasses.replace(platform_lib.current(config.conv_impl),
                                member_vmap=vmapped)
  program = train.build_program(config, members, devices, platform,
                                {**MNIST_DATA, 'pixel_mean': 33.0,
                                 'pixel_std': 78.0})
  init_key, shuffle_key, train_key = members.keys()
  state = program.init_state(members, init_key)
  chunk = program.update
  batches = members.epoch_batches(shuffle_key, 0, len(images), BATCH)[:STEPS]
  args = (devices.place_state(state), devices.replicate(images),
          devices.replicate(labels), devices.shard_batch_indices(batches),
          devices.place_state(train_key))
  compiled = chunk.lower(*args).compile()
  state, metrics = compiled(*args)
  hlo = compiled.as_text()
  return jax.device_get(state), jax.device_get(metrics), hlo


def report() -> dict:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (256, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 256, dtype=np.int32)
  one_device = parallel.DataParallel('mesh', tuple(jax.devices()[:1]),
                                     member_devices=1)
  one, one_metrics, _ = run(one_device, False, images, labels)
  results = {}
  for vmapped in (False, True):
    for member_devices in (4, 2, 1):
      devices = parallel.DataParallel('mesh', tuple(jax.devices()),
                                      member_devices=member_devices)
      state, metrics, hlo = run(
          devices, vmapped, images, labels)
      results[f'{"vmap" if vmapped else "side_by_side"}_{member_devices}'] = {
          'params': float_drift(state.params, one.params),
          'batch_stats': float_drift(state.batch_stats, one.batch_stats),
          'ema': float_drift(state.ema, one.ema),
          'hparams': max_difference(state.hparams, one.hparams),
          'loss': max_difference(metrics['loss'], one_metrics['loss']),
          'loss_shape': list(np.shape(metrics['loss'])),
          'all_gather': hlo.count(' all-gather('),
      }
  return results
