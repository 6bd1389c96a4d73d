"""Images from files, in MNIST's form, for `--mode=predict`.

Photos and scans are turned into what the model was trained on the way MNIST
itself was made: grayscale, light digit on a dark background (dark-on-light
input is inverted), the digit's bounding box scaled with antialiasing to fit
a 20x20 box keeping its aspect ratio, then placed in a 28x28 field so that
its centre of mass is at the centre.
"""

import os

import numpy as np

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')
# Refuse decoding more than this many pixels (a phone photo has ~12M); an
# 8000x8000 image would take hundreds of MB and say nothing more about a digit.
MAX_PIXELS = 25_000_000


class ImageError(Exception):
  """One input that cannot be predicted; the message names the problem."""


def to_mnist(image) -> np.ndarray:
  """A PIL image of one digit -> uint8 [28, 28], light on dark, MNIST-style."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
    # Transparent pixels are background: flatten onto white paper.
    rgba = image.convert('RGBA')
    paper = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(paper, rgba)
  gray = np.asarray(image.convert('L'), np.float32)
  border = lambda a: np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
  if np.median(border(gray)) > 127:  # Dark ink on light paper: invert.
    gray = 255.0 - gray
  # The paper's own shade and its noise (up to the border's 95th percentile)
  # are background, not ink; every pixel above it is, faint edges included,
  # as in MNIST's antialiased 20x20 boxes.
  gray = np.clip(gray - np.percentile(border(gray), 95), 0, 255)
  if gray.max() <= 0:
    raise ImageError('no digit found (the image is blank)')
  ink = np.argwhere(gray > 0)
  (top, left), (bottom, right) = ink.min(0), ink.max(0) + 1
  digit = gray[top:bottom, left:right]
  scale = 20.0 / max(digit.shape)
  size = (max(1, round(digit.shape[1] * scale)),
          max(1, round(digit.shape[0] * scale)))
  digit = np.asarray(Image.fromarray(digit).resize(size, Image.LANCZOS),
                     np.float32).clip(0, 255)
  field = np.zeros((28, 28), np.float32)
  rows, cols = np.indices(digit.shape)
  mass = digit.sum()
  com_y, com_x = (rows * digit).sum() / mass, (cols * digit).sum() / mass
  top = int(np.clip(round(14 - com_y), 0, 28 - digit.shape[0]))
  left = int(np.clip(round(14 - com_x), 0, 28 - digit.shape[1]))
  field[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
  return np.rint(field / field.max() * 255).astype(np.uint8)


def _read_image_file(path: str) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise ImageError(f'{width}x{height} is too large (more than '
                         f'{MAX_PIXELS:,} pixels); crop it to the digit')
      image.load()
      return to_mnist(image)
  except UnidentifiedImageError:
    raise ImageError('not an image PIL can read') from None
  except Image.DecompressionBombError:
    raise ImageError('too large to decode safely; crop it to the digit') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise ImageError(f'cannot decode it ({e})') from None


def _read_npy(path: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise ImageError(f'not a readable .npy file ({e})') from None
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or array.shape[1:] != (28, 28) or not len(array):
    raise ImageError(f'has shape {array.shape}; expected [N, 28, 28] digits')
  if array.dtype != np.uint8:
    if array.max() <= 1.0:  # Floats in [0, 1].
      array = array * 255.0
    array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
  return array


def load_images(specs: list[str]):
  """Reads every file, directory and .npy named; returns ([(name, digit)],
  [(name, error message)])."""
  paths = []
  for spec in specs:
    if os.path.isdir(spec):
      paths += sorted(os.path.join(spec, f) for f in os.listdir(spec)
                      if f.lower().endswith(IMAGE_EXTENSIONS + ('.npy',)))
    else:
      paths.append(spec)
  digits, errors = [], []
  for path in paths:
    try:
      if not os.path.exists(path):
        raise ImageError('no such file')
      if os.path.getsize(path) == 0:
        raise ImageError('the file is empty')
      if path.lower().endswith('.npy'):
        for i, digit in enumerate(_read_npy(path)):
          digits.append((f'{path}[{i}]', digit))
      else:
        digits.append((path, _read_image_file(path)))
    except ImageError as e:
      errors.append((path, str(e)))
  return digits, errors


def predict_files(config, workdir: str, specs: list[str],
                  output: str | None) -> int:
  """Predicts every readable image; prints one line per image and per
  failure. Returns the number of failures."""
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from digits_jax import ensemble  # pylint: disable=g-import-not-at-top
  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top

  digits, errors = load_images(specs)
  results = []
  if digits:
    restored = evaluation.restore_best(config, workdir)
    member_logits = restored.member_logits(config,
                                           np.stack([d for _, d in digits]))
    # An ensemble predicts the mean of its members' probabilities.
    probabilities = np.exp(ensemble.combine(member_logits))
    agreeing = ensemble.agreement(member_logits)
    num_models = len(member_logits)
    for (name, _), p, agree in zip(digits, probabilities, agreeing):
      result = {'image': name, 'digit': int(p.argmax()),
                'probability': float(p.max()),
                'probabilities': [round(float(q), 6) for q in p]}
      line = f'{name}: {int(p.argmax())} (p={p.max():.4f}'
      if num_models > 1:
        result['members_agreeing'] = int(agree)
        result['num_models'] = num_models
        line += f', {agree} of {num_models} members agree'
      results.append(result)
      print(line + ')')
  for name, message in errors:
    print(f'error: {name}: {message}', file=sys.stderr)
  if output:
    from digits_jax import paths  # pylint: disable=g-import-not-at-top
    paths.write_output(output, json.dumps(
        {'predictions': results,
         'errors': [{'image': n, 'error': m} for n, m in errors]}, indent=1))
  return len(errors)
