"""MNIST digits drawn the ways people's images of one digit differ: tight
crops, margins, polarity, coloured ink, shading, JPEG, stroke width, scale,
rotation, transparency.

What `--mode=predict` must handle (tests/test_digit_image.py checks that
`digit_image.to_mnist` gives each back as the digit) and what
scripts/predict_robustness.py measures a checkpoint's accuracy on.
"""

import io

import numpy as np
from PIL import Image
from PIL import ImageFilter

PAPER = (255, 255, 255)
INK = (0, 0, 0)


def render(digit: np.ndarray, scale: int = 4, margin: float = 0.5,
           paper=PAPER, ink=INK, ink_amount=None) -> Image.Image:
  """The digit (light on dark uint8 [28, 28]) drawn `scale`x larger in
  `ink` on `paper`, with `margin` times the digit's box around its box."""
  amount = (np.asarray(Image.fromarray(digit).resize(
      (28 * scale, 28 * scale), Image.BILINEAR), np.float32) / 255.0
            if ink_amount is None else ink_amount)
  rows, cols = np.nonzero(amount > 0.1)
  box = amount[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
  pad = int(round(margin * max(box.shape)))
  amount = np.pad(box, pad)
  paper = np.asarray(paper, np.float32)
  ink = np.asarray(ink, np.float32)
  rgb = paper * (1 - amount[..., None]) + ink * amount[..., None]
  return Image.fromarray(np.rint(rgb).astype(np.uint8), 'RGB')


def _amount(digit, scale):
  return np.asarray(Image.fromarray(digit).resize(
      (28 * scale, 28 * scale), Image.BILINEAR), np.float32) / 255.0


def tight_crop(digit):
  """Cropped to the ink: the digit touches all four edges."""
  return render(digit, margin=0.0)


def crop_into_digit(digit):
  """Cropped one pixel inside the ink's box on every side."""
  image = render(digit, margin=0.0)
  return image.crop((1, 1, image.width - 1, image.height - 1))


def margin(size):
  return lambda digit: render(digit, margin=size)


def light_on_dark(digit):
  return render(digit, paper=(20, 20, 20), ink=(235, 235, 235))


def coloured_ink(digit):
  """Blue ballpoint on cream paper."""
  return render(digit, paper=(250, 240, 200), ink=(30, 50, 170))


def light_coloured_ink(digit):
  """Orange highlighter-like ink on white."""
  return render(digit, paper=(255, 255, 255), ink=(250, 150, 30))


def gradient_lighting(digit):
  """A shadow across the page: brightness from 35% to 100% left to right."""
  image = np.asarray(render(digit), np.float32)
  light = np.linspace(0.35, 1.0, image.shape[1])[None, :, None]
  return Image.fromarray(np.rint(image * light).astype(np.uint8), 'RGB')


def jpeg_30(digit):
  buffer = io.BytesIO()
  render(digit, paper=(235, 230, 220), ink=(40, 40, 60)).save(
      buffer, format='JPEG', quality=30)
  return Image.open(io.BytesIO(buffer.getvalue()))


def thick_strokes(digit):
  """A marker: strokes grown by 2 MNIST pixels."""
  amount = Image.fromarray(np.uint8(_amount(digit, 4) * 255)).filter(
      ImageFilter.MaxFilter(9))
  return render(digit, ink_amount=np.asarray(amount, np.float32) / 255)


def thin_strokes(digit):
  """A fine pen: only the strokes' cores, about one MNIST pixel wide."""
  amount = _amount(digit, 4)
  core = Image.fromarray(np.uint8((amount > 0.5) * 255)).filter(
      ImageFilter.MinFilter(3))
  core = np.asarray(core, np.float32) / 255
  if core.sum() < 10:  # Already thin: keep the strokes.
    core = (amount > 0.5).astype(np.float32)
  return render(digit, ink_amount=core)


def upscaled(factor):
  return lambda digit: render(digit, scale=factor)


def rotated(degrees):
  return lambda digit: render(digit).rotate(degrees, Image.BICUBIC,
                                            expand=True, fillcolor=PAPER)


def transparent_png(digit):
  """Black ink on a transparent sheet (what drawing apps export)."""
  amount = _amount(digit, 4)
  rgba = np.zeros((*amount.shape, 4), np.uint8)
  rgba[..., 3] = np.rint(amount * 255).astype(np.uint8)
  image = Image.fromarray(np.pad(rgba, ((40, 40), (40, 40), (0, 0))), 'RGBA')
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return Image.open(io.BytesIO(buffer.getvalue()))


VARIATIONS = {
    'tight crop (touches all four edges)': tight_crop,
    'crop 1 px into the digit': crop_into_digit,
    'margin 10%': margin(0.1),
    'margin 50% (dark on light)': margin(0.5),
    'margin 200%': margin(2.0),
    'light on dark': light_on_dark,
    'blue ink on cream paper': coloured_ink,
    'orange ink on white': light_coloured_ink,
    'gradient lighting (35-100%)': gradient_lighting,
    'JPEG quality 30': jpeg_30,
    'thick strokes (marker)': thick_strokes,
    'thin strokes (fine pen)': thin_strokes,
    'upscaled 2x': upscaled(2),
    'upscaled 10x': upscaled(10),
    'rotated +8 degrees': rotated(8),
    'rotated -8 degrees': rotated(-8),
    'transparent PNG': transparent_png,
}
