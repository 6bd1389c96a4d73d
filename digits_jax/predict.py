"""`--mode=predict`: image files and .npy digits in, the model's digits out.

Each image is brought to MNIST's form by digit_image.to_mnist; .npy files
hold digits already in that form. A file that cannot be read gets one line
saying why, and the others are still predicted.
"""

import os

import numpy as np

from digits_jax import digit_image

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif',
                    '.tiff')
# Refuse decoding more than this many pixels (a phone photo has ~12M); an
# 8000x8000 image would take hundreds of MB and say nothing more about a digit.
MAX_PIXELS = 25_000_000


def read_image(source) -> np.ndarray:
  """An image file (a path or a binary file object: --mode=serve's request
  bodies) as one MNIST digit, uint8 [28, 28]; an ImageError saying why not.
  The pixel count is checked from the header, before decoding."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  from PIL import UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(source) as image:
      width, height = image.size
      if width * height > MAX_PIXELS:
        raise digit_image.ImageError(
            f'{width}x{height} is too large (more than {MAX_PIXELS:,} '
            'pixels); crop it to the digit')
      image.load()
      # Upright as it is shown: phones store a portrait shot sideways with
      # an EXIF Orientation tag saying how to turn it.
      return digit_image.to_mnist(ImageOps.exif_transpose(image))
  except UnidentifiedImageError:
    raise digit_image.ImageError('not an image PIL can read') from None
  except Image.DecompressionBombError:
    raise digit_image.ImageError(
        'too large to decode safely; crop it to the digit') from None
  except (OSError, SyntaxError, ValueError) as e:
    raise digit_image.ImageError(f'cannot decode it ({e})') from None


def _read_npy(path: str) -> np.ndarray:
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise digit_image.ImageError(f'not a readable .npy file ({e})') from None
  if isinstance(array, np.lib.npyio.NpzFile):
    array.close()
    raise digit_image.ImageError(
        'is a .npz archive (np.savez), not a .npy array; save the digits '
        'with np.save(path, digits)')
  if not (np.issubdtype(array.dtype, np.integer)
          or np.issubdtype(array.dtype, np.floating)):
    raise digit_image.ImageError(
        f'holds {array.dtype} values; expected uint8 digits or floats')
  if array.ndim == 2:
    array = array[None]
  if array.ndim != 3 or array.shape[1:] != (28, 28) or not len(array):
    raise digit_image.ImageError(
        f'has shape {array.shape}; expected [N, 28, 28] digits')
  if array.dtype != np.uint8:
    if array.max() <= 1.0:  # Floats in [0, 1].
      array = array * 255.0
    array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
  return array


def _folder_contents(folder: str) -> tuple[list[str], str | None]:
  """The files in `folder` that predict reads, sorted, and, when there is
  none, why (what the folder holds instead)."""
  try:
    names = sorted(os.listdir(folder))
  except OSError as e:
    return [], f'cannot list it ({e.strerror or e})'
  readable = [os.path.join(folder, name) for name in names
              if name.lower().endswith(IMAGE_EXTENSIONS + ('.npy',))
              and os.path.isfile(os.path.join(folder, name))]
  if readable:
    return readable, None
  subfolders = sum(os.path.isdir(os.path.join(folder, n)) for n in names)
  others = sorted({os.path.splitext(n)[1] or n for n in names
                   if not os.path.isdir(os.path.join(folder, n))})
  held = ([f'{len(names) - subfolders} other file(s) ({", ".join(others)})']
          if others else []) + (
              [f'{subfolders} subfolder(s), which are not searched']
              if subfolders else [])
  return [], ('no image or .npy file in it' +
              (f' (it holds {" and ".join(held)})' if held else
               ' (it is empty)') +
              '; predict reads PNG, JPEG, BMP, GIF, WebP, TIFF and .npy')


def load_images(specs: list[str]):
  """Reads every file, directory and .npy named; returns ([(name, digit)],
  [(name, error message)]). A file that cannot be read, for whatever
  reason, is an error of its own: the others are still read."""
  paths, errors = [], []
  for spec in specs:
    if os.path.isdir(spec):
      found, empty = _folder_contents(spec)
      paths += found
      if empty:
        errors.append((spec, empty))
    else:
      paths.append(spec)
  digits = []
  for path in paths:
    try:
      if not os.path.exists(path):
        raise digit_image.ImageError('no such file')
      if os.path.getsize(path) == 0:
        raise digit_image.ImageError('the file is empty')
      if path.lower().endswith('.npy'):
        for i, digit in enumerate(_read_npy(path)):
          digits.append((f'{path}[{i}]', digit))
      else:
        digits.append((path, read_image(path)))
    except digit_image.ImageError as e:
      errors.append((path, str(e)))
    except Exception as e:  # pylint: disable=broad-exception-caught
      # Whatever else a decoder raises on a strange file (Pillow's plugins,
      # numpy): that file's line, not the end of everyone's results.
      errors.append((path, f'cannot read it ({type(e).__name__}: '
                           f'{str(e).splitlines()[0] if str(e) else ""})'))
  return digits, errors


def prediction(probabilities: np.ndarray, agreeing: int,
               num_models: int) -> dict:
  """One digit's prediction as predict's JSON and serve's API give it."""
  result = {'digit': int(probabilities.argmax()),
            'probability': float(probabilities.max()),
            'probabilities': [round(float(q), 6) for q in probabilities]}
  if num_models > 1:
    result['members_agreeing'] = int(agreeing)
    result['num_models'] = num_models
  return result


def predict_files(config, members, workdir: str, specs: list[str],
                  output: str | None, platform, member: str = '') -> int:
  """Predicts every readable image; prints one line per image and per
  failure. Returns the number of failures. `member`: as restore_best's.
  `output`: a path for the JSON as well, or '-' for the JSON alone on
  standard output (the per-image lines then go to standard error)."""
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top
  from digits_jax import restore  # pylint: disable=g-import-not-at-top

  digits, errors = load_images(specs)
  from digits_jax import paths  # pylint: disable=g-import-not-at-top
  lines = sys.stderr if output == paths.STANDARD_OUTPUT else sys.stdout
  results = []
  if digits:
    restored = restore.restore_best(config, members, workdir, platform,
                                    member)
    member_logits = evaluation.restored_logits(
        restored, config, np.stack([d for _, d in digits]))
    # An ensemble predicts the mean of its members' probabilities.
    probabilities = np.exp(members_lib.combine(member_logits))
    agreeing = members_lib.agreement(member_logits)
    num_models = len(member_logits)
    for (name, _), p, agree in zip(digits, probabilities, agreeing):
      result = {'image': name, **prediction(p, agree, num_models)}
      line = f'{name}: {int(p.argmax())} (p={p.max():.4f}'
      if num_models > 1:
        line += f', {agree} of {num_models} members agree'
      results.append(result)
      print(line + ')', file=lines)
  for name, message in errors:
    print(f'error: {name}: {message}', file=sys.stderr)
  if output:
    paths.write_output(output, json.dumps(
        {'predictions': results,
         'errors': [{'image': n, 'error': m} for n, m in errors]}, indent=1))
  return len(errors)
