"""With 8 devices: trains a few steps from one state and batch on 1 device,
on 8 (mesh) and on 8 (pmap); the largest differences and the mesh
program's collectives. Run by eight_devices.py for tests/test_parallel.py."""

import jax
import numpy as np

from digits_jax import config_checks
from digits_jax import members as members_lib
from digits_jax import parallel
from digits_jax import platform as platform_lib
from digits_jax import steps
from digits_jax import train
from helpers import MNIST_DATA, float_drift, max_difference

STEPS, BATCH = 3, 32


def run(devices: parallel.DataParallel, images, labels, batches):
  config = config_checks.load_config('tiny')
  config.input_size = 28
  # XLA's default convolutions for all three: jax.pmap takes no compiler
  # options (train.build_program), and the libraries' last bits differ by
  # more than the tolerance (1e-3 in the loss after 3 steps).
  config.conv_impl = 'xla'
  platform = platform_lib.current(config.conv_impl)
  members = members_lib.Members()
  program = train.build_program(config, members, devices, platform,
                                {**MNIST_DATA, 'pixel_mean': 33.0,
                                 'pixel_std': 78.0})
  state = program.init_state(members, jax.random.key(0))
  chunk = program.update
  args = (devices.replicate(state), devices.replicate(images),
          devices.replicate(labels), devices.shard_batch_indices(batches),
          jax.random.key(1))
  compiled = chunk.lower(*args).compile()
  hlo = compiled.as_text() if devices.mode == 'mesh' else ''
  state, metrics = compiled(*args)
  return (jax.device_get(devices.unreplicate(state)),
          devices.to_host(metrics), hlo)


def report() -> dict:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (256, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 256, dtype=np.int32)
  batches = np.asarray(steps.epoch_batches(jax.random.key(2), 0, 256, BATCH)
                       [:STEPS])
  one, one_metrics, _ = run(
      parallel.DataParallel('mesh', tuple(jax.devices()[:1])), images, labels,
      batches)
  results = {}
  for mode in ('mesh', 'pmap'):
    state, metrics, hlo = run(parallel.DataParallel(mode, tuple(jax.devices())),
                              images, labels, batches)
    results[mode] = {
        'params': max_difference(state.params, one.params),
        'params_drift': float_drift(state.params, one.params),
        'batch_stats': max_difference(state.batch_stats, one.batch_stats),
        'loss': max_difference(metrics['loss'], one_metrics['loss']),
        'step': int(state.step),
    }
    if hlo:
      results[mode]['all_reduce'] = hlo.count(' all-reduce(')
      results[mode]['all_gather'] = hlo.count(' all-gather(')
  results['param_scale'] = max(float(np.max(np.abs(x)))
                               for x in jax.tree.leaves(one.params))
  return results
