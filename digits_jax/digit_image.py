"""One digit of a photo, scan or crop, in MNIST's form (for `--mode=predict`).

MNIST was made from binary scans: each digit's bounding box scaled with
antialiasing to fit a 20x20 box keeping its aspect ratio, then placed in a
28x28 field with its centre of mass at the centre, light on dark. `to_mnist`
first recovers such a binary digit from whatever photo, scan or crop it is
given, without assuming a margin around it:

  * ink from the whole image: the channel (gray or one of R, G, B) where
    Otsu's classes lie furthest apart, so coloured ink counts;
    transparent pixels are background whatever their colour;
  * polarity: the class that holds most of the image's border is paper (a
    digit touching the edges still leaves most of it to paper); where the
    border is split (a shadow across it), ink is what departs furthest
    from the local median;
  * uneven light: a top-hat (the image minus its opening with a window
    wider than a stroke) flattens shadows and gradients before Otsu;
  * marks: connected pieces close together are one mark; pieces far from
    the largest mark and small against it are specks and dropped; two or
    more marks of digit size are refused (one digit per image);
  * stroke width: measured against the digit's height and brought into
    MNIST's range by dilating thin pen or eroding thick marker strokes.

Measured on generated variations of the official test digits:
scripts/predict_robustness.py (README.md has the table).
"""

import numpy as np

# Images are analysed with their longer side at most this long: a 20x20 box
# needs far less, and morphology on a 12-megapixel photo would take seconds.
WORKING_SIZE = 384
# The binary digit is brought to this height before its stroke width is
# measured and adjusted (NIST's scans were about this size).
NORMAL_HEIGHT = 80
# MNIST's stroke width relative to the digit's height: the 5th and 95th
# percentiles of `stroke_width` over its first 300 test digits, each
# binarized at 10x and brought to NORMAL_HEIGHT as here. Strokes inside
# are left alone.
MNIST_STROKE_RANGE = (0.09, 0.23)
# Ink must differ from paper by this much (of 255) after flattening, or the
# image is blank: paper's grain and JPEG noise stay well below it.
MIN_INK_CONTRAST = 32


class ImageError(Exception):
  """One input that cannot be predicted; the message names the problem."""


def otsu_threshold(values: np.ndarray) -> tuple[float, float]:
  """Otsu's threshold of uint8-range values and its separability (between-
  class over total variance, 0 to 1)."""
  hist = np.bincount(np.clip(values, 0, 255).astype(np.uint8).ravel(),
                     minlength=256).astype(np.float64)
  total = hist.sum()
  levels = np.arange(256, dtype=np.float64)
  weight0 = np.cumsum(hist)
  weight1 = total - weight0
  mass0 = np.cumsum(hist * levels)
  mean0 = mass0 / np.maximum(weight0, 1)
  mean1 = (mass0[-1] - mass0) / np.maximum(weight1, 1)
  between = weight0 * weight1 * (mean0 - mean1) ** 2 / total ** 2
  best = int(np.argmax(between))
  variance = values.astype(np.float64).var()
  return best + 0.5, float(between[best] / variance) if variance else 0.0


def _channels(image) -> list[np.ndarray]:
  """Gray and R, G, B as float arrays; transparency flattened onto the
  colour that contrasts most with the opaque pixels."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode in ('RGBA', 'LA', 'PA') or 'transparency' in image.info:
    rgba = np.asarray(image.convert('RGBA'), np.float32)
    alpha = rgba[..., 3:] / 255.0
    opaque = rgba[..., :3][alpha[..., 0] > 0.5]
    # Ink drawn on a transparent sheet: the sheet becomes the opposite of
    # the ink's brightness.
    paper = 0.0 if opaque.size and opaque.mean() > 127 else 255.0
    rgb = rgba[..., :3] * alpha + paper * (1 - alpha)
    image = Image.fromarray(np.rint(rgb).astype(np.uint8), 'RGB')
  rgb = np.asarray(image.convert('RGB'), np.float32)
  gray = np.asarray(image.convert('L'), np.float32)
  return [gray, rgb[..., 0], rgb[..., 1], rgb[..., 2]]


# Pillow's modes of one channel wider than 8 bits: 16-bit integers (PNG,
# TIFF), 32-bit integers, 32-bit floats (TIFF).
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def as_8bit(image):
  """A 16-bit, 32-bit or float grayscale image as 8-bit 'L', scaled as its
  mode says: 16-bit from 0-65535; 32-bit integers the same when a value
  exceeds 255, else as 8-bit values; floats from [0, 1] when none exceeds
  1, else as 8-bit values, or from 0 to their maximum when one exceeds 255.
  Pillow's own conversion clips such values at 255, which turns a 16-bit
  scan white (blank). Other modes are returned as they are."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode not in _SIXTEEN_BIT_MODES + ('I', 'F'):
    return image
  values = np.nan_to_num(np.asarray(image, np.float64), nan=0.0,
                         posinf=0.0, neginf=0.0)
  top = float(values.max(initial=0.0))
  if image.mode in _SIXTEEN_BIT_MODES or (image.mode == 'I' and top > 255):
    full_scale = max(65535.0, top)
  elif image.mode == 'F' and top <= 1.0:
    full_scale = 1.0
  else:
    full_scale = max(255.0, top)
  scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255)
  return Image.fromarray(scaled.astype(np.uint8), 'L')


def _working_image(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  scale = WORKING_SIZE / max(image.size)
  if scale < 1:
    size = (max(1, round(image.size[0] * scale)),
            max(1, round(image.size[1] * scale)))
    image = image.convert('RGBA' if 'A' in image.mode or
                          'transparency' in image.info else 'RGB')
    image = image.resize(size, Image.BOX)
  return image


def _border(a: np.ndarray) -> np.ndarray:
  return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def _ink_is_dark(gray: np.ndarray, dark: np.ndarray) -> bool:
  """Polarity: paper is the class that holds most of the border, where
  that is clear. Where it is not (a shadow across the page, a crop into a
  thick digit), ink is what departs furthest from the local paper level,
  the median over a window wider than a stroke."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  on_border = _border(dark).mean()
  if not 0.4 < on_border < 0.6:
    return on_border < 0.5
  step = max(1, min(gray.shape) // 64)  # The median is slow; coarse is enough.
  coarse = gray[::step, ::step]
  paper = ndimage.median_filter(coarse, size=max(3, min(coarse.shape) // 3))
  darker = np.percentile(paper - coarse, 98)
  lighter = np.percentile(coarse - paper, 98)
  return darker > lighter


def ink_map(image) -> tuple[np.ndarray, np.ndarray]:
  """The ink of a PIL image at its working size: (amount, mask), the amount
  from 0 (paper) to 1 (ink) keeping antialiased edges, the mask Otsu's."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  channels = _channels(_working_image(as_8bit(image)))
  # The channel whose two classes lie furthest apart (Otsu's between-class
  # variance: separability times variance), so that orange ink on white
  # is read in blue, where it is dark, not in red, where it is not.
  gray = max(channels, key=lambda c: otsu_threshold(c)[1] * c.var())
  if gray.max() - gray.min() < 24:
    raise ImageError('no digit found (the image is blank)')
  threshold, _ = otsu_threshold(gray)
  if _ink_is_dark(gray, gray < threshold):  # Make ink the bright class.
    gray = 255.0 - gray
  # Ink is now bright. A top-hat removes the paper's shading: the opening
  # (min then max over a window wider than any stroke) keeps only what is
  # broad, i.e. the background and its gradients.
  window = max(3, int(round(min(gray.shape) * 0.4)))
  background = ndimage.grey_opening(gray, size=(window, window))
  flat = gray - ndimage.uniform_filter(background, size=window)
  threshold, _ = otsu_threshold(np.clip(flat, 0, 255))
  ink = flat > threshold
  if ink.all() or not ink.any():
    raise ImageError('no digit found (the image is blank)')
  paper_level, ink_level = flat[~ink].mean(), np.percentile(flat[ink], 90)
  if ink_level - paper_level < MIN_INK_CONTRAST:
    raise ImageError('no digit found (the image is blank)')
  amount = np.clip((flat - paper_level) / (ink_level - paper_level), 0, 1)
  return amount, ink


def _marks(mask: np.ndarray) -> list[np.ndarray]:
  """The mask's marks: connected pieces grouped when their bounding boxes,
  grown by a sixth of the tallest piece, touch (a stroke broken by a faint
  pen stays one mark). Largest first."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
  if count == 0:
    raise ImageError('no digit found (the image is blank)')
  boxes = ndimage.find_objects(labels)
  tallest = max(b[0].stop - b[0].start for b in boxes)
  margin = max(1, tallest // 6)
  grown = [(b[0].start - margin, b[0].stop + margin,
            b[1].start - margin, b[1].stop + margin) for b in boxes]
  touch = lambda a, b: (a[0] < b[1] and b[0] < a[1] and a[2] < b[3]
                        and b[2] < a[3])
  group = list(range(count))
  def root(i):
    while group[i] != i:
      i = group[i]
    return i
  for i in range(count):
    for j in range(i + 1, count):
      if touch(grown[i], grown[j]):
        group[root(j)] = root(i)
  marks = {}
  for i in range(count):
    marks.setdefault(root(i), []).append(i + 1)
  masks = [np.isin(labels, members) for members in marks.values()]
  return sorted(masks, key=lambda m: -m.sum())


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice]:
  rows, cols = np.nonzero(mask)
  return (slice(rows.min(), rows.max() + 1),
          slice(cols.min(), cols.max() + 1))


def the_digit(mask: np.ndarray) -> np.ndarray:
  """The mask of the one digit-sized mark; specks dropped; several
  digit-sized marks refused."""
  marks = _marks(mask)
  height = lambda m: _bounding_box(m)[0].stop - _bounding_box(m)[0].start
  largest = marks[0]
  digit_sized = [m for m in marks
                 if height(m) >= 0.5 * height(largest)
                 and m.sum() >= 0.15 * largest.sum()]
  if len(digit_sized) > 1:
    raise ImageError(f'found {len(digit_sized)} separate marks of a '
                     'digit\'s size; predict takes one digit per image: crop '
                     'to one')
  return largest


def stroke_width(mask: np.ndarray) -> float:
  """Mean stroke width of a binary shape, in pixels: twice the area over
  the length of its outline (a stroke of width w and length l has area
  w*l and outline about 2l)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  padded = np.pad(mask, 1)
  outline = padded & ~ndimage.binary_erosion(padded)
  return 2.0 * mask.sum() / max(outline.sum(), 1)


def _normalize_strokes(amount: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """The digit's ink amount, cropped to its mark, at NORMAL_HEIGHT, its
  strokes dilated or eroded into MNIST's range of width relative to
  height; within the range, untouched."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  box = _bounding_box(mask)
  # The mark's own ink with its antialiased edge, nothing else in its box.
  near = ndimage.binary_dilation(mask, iterations=2)
  digit, mask = (amount * near)[box], mask[box]
  scale = NORMAL_HEIGHT / digit.shape[0]
  size = (max(1, round(digit.shape[1] * scale)), NORMAL_HEIGHT)
  resize = lambda a: np.asarray(Image.fromarray(a.astype(np.float32), 'F')
                                .resize(size, Image.BILINEAR))
  digit, mask = np.pad(resize(digit), 4), np.pad(resize(mask) > 0.5, 4)
  if not mask.any():
    return digit
  low, high = MNIST_STROKE_RANGE
  width = stroke_width(mask) / NORMAL_HEIGHT
  disk = ndimage.generate_binary_structure(2, 1)
  steps = int(round(abs(width - np.clip(width, low, high)) * NORMAL_HEIGHT
                    / 2))
  for _ in range(steps):
    if width < low:
      digit = ndimage.grey_dilation(digit, footprint=disk)
    else:
      thinner = ndimage.grey_erosion(digit, footprint=disk)
      # Never erode a stroke away: keep most of the digit's extent.
      if _extent(thinner > 0.5) < 0.8 * _extent(digit > 0.5):
        break
      digit = thinner
  return digit


def _extent(mask: np.ndarray) -> int:
  if not mask.any():
    return 0
  box = _bounding_box(mask)
  return max(box[0].stop - box[0].start, box[1].stop - box[1].start)


def to_mnist(image) -> np.ndarray:
  """A PIL image of one digit -> uint8 [28, 28], light on dark, MNIST-style."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  amount, mask = ink_map(image)
  digit = _normalize_strokes(amount, the_digit(mask))
  # The box holds all of the digit's ink, its faint antialiased edge too,
  # as MNIST's boxes do.
  if not (digit > 0.5).any():
    raise ImageError('no digit found (the image is blank)')
  digit = digit[_bounding_box(digit > 0.05)] * 255.0
  scale = 20.0 / max(digit.shape)
  size = (max(1, round(digit.shape[1] * scale)),
          max(1, round(digit.shape[0] * scale)))
  digit = np.asarray(Image.fromarray(digit).resize(size, Image.LANCZOS),
                     np.float32).clip(0, 255)
  field = np.zeros((28, 28), np.float32)
  rows, cols = np.indices(digit.shape)
  mass = digit.sum()
  if mass <= 0:
    raise ImageError('no digit found (the image is blank)')
  com_y, com_x = (rows * digit).sum() / mass, (cols * digit).sum() / mass
  top = int(np.clip(round(14 - com_y), 0, 28 - digit.shape[0]))
  left = int(np.clip(round(14 - com_x), 0, 28 - digit.shape[1]))
  field[top:top + digit.shape[0], left:left + digit.shape[1]] = digit
  return np.rint(field / field.max() * 255).astype(np.uint8)
