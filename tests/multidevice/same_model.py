"""Run with XLA_FLAGS=--xla_force_host_platform_device_count=8: trains K steps
from one state and batch on 1 device, on 8 (mesh) and on 8 (pmap), and
prints one JSON line with the largest differences and the mesh program's
collectives. Driven by tests/test_parallel.py."""

import functools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from configs import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import recipe
from digits_jax import steps

STEPS, BATCH = 3, 32


def run(devices: parallel.DataParallel, images, labels, batches):
  config = tiny.get_config()
  config.input_size = 28
  stats = {'pixel_mean': 33.0, 'pixel_std': 78.0}
  model, tx, preprocess = recipe.build(config, stats, devices.axis_name)
  state = steps.create_train_state(model, tx, jax.random.key(0), 28)
  step_fn = recipe.train_step_fn(config, model, tx, preprocess,
                                 devices.axis_name)
  chunk = devices.compile(functools.partial(steps.scan_train_steps, step_fn))
  args = (devices.replicate(state), devices.replicate(images),
          devices.replicate(labels), devices.shard_batch_indices(batches),
          jax.random.key(1))
  hlo = chunk.lower(*args).compile().as_text() if devices.mode == 'mesh' else ''
  state, metrics = chunk(*args)
  return (jax.device_get(devices.unreplicate(state)),
          devices.to_host(metrics), hlo)


def max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def float_drift(a, b) -> dict[str, float]:
  """How far apart two trees that should hold the same values are, worst leaf.

  'relative': the largest difference over the leaf's largest magnitude.
  'beyond_1e-4': the fraction of the leaf's entries more than 1e-4 apart.
  A few Adam steps from the same start, with float32 summed in another order
  (another device count, vmap's grouped convolutions, another CPU's kernels),
  drift apart by up to ~1e-2 relative on Adam's moments and BatchNorm's
  statistics; the parameters whose gradients are near zero (Adam magnifies
  their last bits into steps of about the learning rate) by up to ~1e-3, a
  few per cent of a leaf at most. A wrong key, data order or member moves
  the moments by ~1 relative and almost all parameters by ~1e-3, beyond
  1e-4. (Relative is no measure for parameters: a bias that starts at zero
  has only its drift to compare with.)"""
  relative, beyond = 0.0, 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    difference = np.abs(x - y)
    scale = max(float(np.max(np.abs(y))), 1e-6)
    relative = max(relative, float(np.max(difference)) / scale)
    beyond = max(beyond, float(np.mean(difference > 1e-4)))
  return {'relative': relative, 'beyond_1e-4': beyond}


def main():
  assert jax.device_count() == 8, jax.devices()
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
        'batch_stats': max_difference(state.batch_stats, one.batch_stats),
        'loss': max_difference(metrics['loss'], one_metrics['loss']),
        'step': int(state.step),
    }
    if hlo:
      results[mode]['all_reduce'] = hlo.count(' all-reduce(')
      results[mode]['all_gather'] = hlo.count(' all-gather(')
  results['param_scale'] = max(float(np.max(np.abs(x)))
                               for x in jax.tree.leaves(one.params))
  print(json.dumps(results))


if __name__ == '__main__':
  main()
