"""digit_image.to_mnist: photos, scans and crops of one digit in MNIST's form.

Real MNIST test digits, drawn back onto paper in the ways people's images
differ (digits_jax/photo_variations.py, which
scripts/predict_robustness.py measures predict on), must come back as
themselves."""

import numpy as np
from PIL import Image
import pytest

from digits_jax import digit_image
from digits_jax import input_pipeline
from digits_jax import photo_variations


def test_to_mnist_inverts_fits_20x20_and_centres_by_mass():
  paper = np.full((300, 200), 255, np.uint8)
  paper[40:260, 90:110] = 0  # A thick, tall stroke: a "1".
  digit = digit_image.to_mnist(Image.fromarray(paper))
  assert digit.shape == (28, 28) and digit.dtype == np.uint8
  ink = np.argwhere(digit > 30)
  height = ink[:, 0].max() - ink[:, 0].min() + 1
  assert 19 <= height <= 21  # The larger side fills the 20-pixel box.
  rows, cols = np.indices(digit.shape)
  mass = digit.astype(float).sum()
  assert abs((rows * digit).sum() / mass - 14) < 1
  assert abs((cols * digit).sum() / mass - 14) < 1
  assert digit[0, 0] == 0  # Dark background.


def test_to_mnist_gives_back_real_mnist_digits(mnist_data_dir):
  """MNIST digits are already in MNIST's form (20x20 box, centre of mass at
  the centre): drawn dark on light, 3x larger, off-centre on a wide page,
  they must come back as themselves."""
  builder = input_pipeline.prepare_mnist(mnist_data_dir, try_download=False)
  digits, _ = input_pipeline._read_split(builder, 'test', 20)
  for digit in digits:
    page = np.full((120, 160), 255, np.uint8)
    page[10:94, 60:144] = 255 - np.asarray(
        Image.fromarray(digit).resize((84, 84), Image.BILINEAR))
    got = digit_image.to_mnist(Image.fromarray(page)).astype(np.float64)
    want = digit.astype(np.float64)
    # The shape, to within the one-pixel rounding of where the centre of
    # mass is placed.
    assert _similarity(got, want) > 0.85
    rows, cols = np.indices(got.shape)
    centre = lambda a: ((rows * a).sum() / a.sum(), (cols * a).sum() / a.sum())
    np.testing.assert_allclose(centre(got), centre(want), atol=1.0)


# --------------------------------------------------------------------------
# The images people have: photo_variations of real test digits must come
# back as those digits.


@pytest.fixture(scope='module')
def real_digits(mnist_data_dir):
  builder = input_pipeline.prepare_mnist(mnist_data_dir, try_download=False)
  digits, _ = input_pipeline._read_split(builder, 'test', 8)
  return digits


def _similarity(got, want):
  """Correlation with the original digit, allowing a one-pixel shift (the
  centre of mass is placed to the nearest pixel)."""
  best = -1.0
  for dy in (-1, 0, 1):
    for dx in (-1, 0, 1):
      shifted = np.roll(got.astype(np.float64), (dy, dx), axis=(0, 1))
      best = max(best, np.corrcoef(shifted.ravel(),
                                   want.astype(np.float64).ravel())[0, 1])
  return best


# Strokes made thicker, thinner or rotated are not the original digit
# pixel for pixel; everything else must be nearly.
RESHAPED = ('thick strokes (marker)', 'thin strokes (fine pen)',
            'rotated +8 degrees', 'rotated -8 degrees')


@pytest.mark.parametrize('variation', list(photo_variations.VARIATIONS))
def test_to_mnist_recovers_real_digits_from_each_variation(variation,
                                                          real_digits):
  make = photo_variations.VARIATIONS[variation]
  similarity = [_similarity(digit_image.to_mnist(make(digit)), digit)
                for digit in real_digits]
  floor = 0.8 if variation in RESHAPED else 0.9
  assert np.mean(similarity) > floor, similarity
  assert min(similarity) > floor - 0.25, similarity


def test_a_digit_cut_into_on_all_four_sides_is_still_the_digit(real_digits):
  """Ink all along the border (a box cut out of a form): the border is no
  longer paper, so it cannot say what paper looks like."""
  similarity = []
  for digit in real_digits:
    image = photo_variations.render(digit, margin=0.0)
    inset = image.crop((4, 4, image.width - 4, image.height - 4))
    ink = np.asarray(inset.convert('L')) < 128
    border = np.concatenate([ink[0], ink[-1], ink[:, 0], ink[:, -1]])
    if border.mean() < 0.1:
      continue  # This digit's strokes do not reach far enough out.
    got = digit_image.to_mnist(inset)
    want = digit_image.to_mnist(image)  # The same ink with its box intact.
    similarity.append(_similarity(got, want))
  # Cutting one MNIST pixel off every side changes a thick digit's shape a
  # little; taking the border for paper (as before) loses most of it
  # (measured then: a mean of 0.65, down to 0.16).
  assert len(similarity) >= 4
  assert np.mean(similarity) > 0.85 and min(similarity) > 0.7, similarity


def test_specks_away_from_the_digit_are_ignored(real_digits):
  for digit in real_digits[:4]:
    clean = np.asarray(photo_variations.render(digit, margin=1.0))
    page = clean.copy()
    h, w = page.shape[:2]
    for y, x in ((4, 4), (4, w - 8), (h - 8, 4), (h - 8, w - 8),
                 (h // 2, 6)):
      page[y:y + 3, x:x + 3] = 0
    got = digit_image.to_mnist(Image.fromarray(page))
    # The specks only move the measured paper level a little.
    np.testing.assert_allclose(
        got, digit_image.to_mnist(Image.fromarray(clean)), atol=8)


def test_several_digit_sized_marks_are_refused(real_digits):
  a = np.asarray(photo_variations.render(real_digits[0], margin=0.2))
  b = np.asarray(photo_variations.render(real_digits[1], margin=0.2))
  page = np.full((max(len(a), len(b)), a.shape[1] + b.shape[1], 3), 255,
                 np.uint8)
  page[:len(a), :a.shape[1]] = a
  page[:len(b), a.shape[1]:] = b
  with pytest.raises(digit_image.ImageError, match='found 2 separate marks'):
    digit_image.to_mnist(Image.fromarray(page))


@pytest.mark.parametrize('paper', ['flat', 'grainy', 'shaded'])
def test_paper_without_a_digit_is_blank(paper):
  rng = np.random.default_rng(0)
  page = np.full((120, 90), 235.0)
  if paper == 'grainy':
    page += rng.normal(0, 6, page.shape)
  elif paper == 'shaded':
    page *= np.linspace(0.4, 1.0, 90)[None, :]
  image = Image.fromarray(np.clip(page, 0, 255).astype(np.uint8))
  with pytest.raises(digit_image.ImageError, match='no digit found'):
    digit_image.to_mnist(image)
