"""The checks that need 8 devices, in one process of 8 simulated CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8, set by the fixture in
tests/conftest.py): each part's report and seconds, as one JSON line.

One process for all of them, rather than one per test: the imports and the
programs they share are paid once. XLA:CPU's collectives wait for all 8
devices' threads and abort after 40 s by default, which 2 cores shared with
another test worker can exceed: the fixture's environment
(helpers.cli_env) raises that deadline.
"""

import json
import os
import sys
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.dirname(TESTS), TESTS, os.path.dirname(
    os.path.abspath(__file__))]

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import ensemble_model  # pylint: disable=g-import-not-at-top,wrong-import-position
import evaluation_on_the_mesh  # pylint: disable=g-import-not-at-top,wrong-import-position
import same_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import steps  # pylint: disable=g-import-not-at-top,wrong-import-position


def augmentation_under_pmap() -> dict:
  """The augmentation with the elastic field of 16 images on one device and
  split over 8 under pmap: the largest difference."""
  preprocess = steps.Preprocess(
      input_size=32, pixel_mean=0.0, pixel_std=1.0, rotation_degrees=10.0,
      zoom_range=0.1, shift_range=0.1, elastic_alpha=30.0, elastic_sigma=4.0)
  images = np.random.default_rng(0).integers(
      0, 256, (16, 28, 28)).astype(np.uint8)
  key = jax.random.key(3)
  one = np.asarray(preprocess(images, key))
  eight = jax.pmap(lambda x, k: preprocess(x, k, 'batch'), axis_name='batch',
                   in_axes=(0, None))(images.reshape(8, 2, 28, 28), key)
  return {'max_difference': float(
      np.abs(np.asarray(eight).reshape(one.shape) - one).max())}


PARTS = {'augmentation_under_pmap': augmentation_under_pmap,
         'same_model': same_model.report,
         'ensemble': ensemble_model.report,
         'evaluation_on_the_mesh': evaluation_on_the_mesh.report}


def main():
  assert jax.device_count() == 8, jax.devices()
  reports = {}
  for name, part in PARTS.items():
    start = time.perf_counter()
    result = part()
    reports[name] = {'result': result,
                     'seconds': round(time.perf_counter() - start, 1)}
  print(json.dumps(reports))


if __name__ == '__main__':
  main()
