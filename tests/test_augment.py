import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import augment


def _dot_image(size, y, x):
  image = np.zeros((size, size), np.float32)
  image[y, x] = 255.0
  return image


def test_identity_parameters_return_the_image_unchanged():
  images = jax.random.uniform(jax.random.key(0), (4, 32, 32)) * 255
  out = augment.affine_warp(images, augment.AffineParams.identity(4))
  np.testing.assert_allclose(out, images, atol=1e-4)


def test_integer_shift_moves_pixels_right_and_down():
  image = _dot_image(28, 10, 12)[None]
  params = augment.AffineParams.identity(1)._replace(
      shift_x=jnp.array([3.0]), shift_y=jnp.array([-2.0]))
  out = np.asarray(augment.affine_warp(jnp.asarray(image), params))[0]
  assert out[8, 15] == pytest.approx(255.0, abs=1e-3)
  assert out.sum() == pytest.approx(255.0, abs=1e-2)


def test_rotation_by_90_degrees_counter_clockwise():
  # 29x29 has an exact centre pixel (14, 14). A dot above the centre ends up
  # left of it after a quarter turn counter-clockwise, as seen on screen.
  image = _dot_image(29, 4, 14)[None]
  params = augment.AffineParams.identity(1)._replace(
      angle=jnp.array([np.pi / 2]))
  out = np.asarray(augment.affine_warp(jnp.asarray(image), params))[0]
  assert out[14, 4] == pytest.approx(255.0, abs=1e-2)
  assert out.sum() == pytest.approx(255.0, abs=1e-1)


def test_zoom_enlarges_about_the_centre():
  image = _dot_image(29, 14, 19)[None]  # 5 pixels right of the centre.
  params = augment.AffineParams.identity(1)._replace(
      zoom_x=jnp.array([2.0]), zoom_y=jnp.array([2.0]))
  out = np.asarray(augment.affine_warp(jnp.asarray(image), params))[0]
  assert out[14, 24] == pytest.approx(255.0, abs=1e-3)  # 10 pixels right.


def test_preprocess_augments_each_image_with_its_own_transform():
  from digits_jax import steps  # pylint: disable=g-import-not-at-top
  preprocess = steps.Preprocess(input_size=32, pixel_mean=0.0, pixel_std=1.0,
                                rotation_degrees=10, zoom_range=0.1,
                                shift_range=0.1)
  images = jnp.tile(jnp.asarray(_dot_image(28, 14, 14), jnp.uint8)[None],
                    (16, 1, 1))
  out = jax.jit(preprocess)(images, jax.random.key(0))
  assert out.shape == (16, 32, 32, 1) and out.dtype == jnp.float32
  flat = np.asarray(out).reshape(16, -1)
  assert len({row.tobytes() for row in flat}) == 16
  # Without a key, no augmentation: every image stays the same.
  plain = np.asarray(jax.jit(preprocess)(images)).reshape(16, -1)
  assert len({row.tobytes() for row in plain}) == 1


def test_random_parameters_stay_in_their_ranges():
  params = augment.random_params(jax.random.key(0), 1000, 32,
                                 rotation_degrees=10, zoom_range=0.1,
                                 shift_range=0.1)
  assert np.abs(params.angle).max() <= np.deg2rad(10) + 1e-6
  for zoom in (params.zoom_x, params.zoom_y):
    assert 0.9 - 1e-6 <= zoom.min() and zoom.max() <= 1.1 + 1e-6
  for shift in (params.shift_x, params.shift_y):
    assert np.abs(shift).max() <= 3.2 + 1e-5
    assert np.abs(shift).max() > 2.5  # The range is used, not just its centre.


@pytest.mark.parametrize('which', ['rotation', 'zoom', 'shift'])
def test_each_augmentation_parameter_alone_spans_its_range_on_both_sides(
    which):
  """Keras' ImageDataGenerator draws each transform uniformly in
  [-range, +range] (zoom in [1 - range, 1 + range]); a parameter left at 0
  leaves its transform the identity."""
  ranges = {'rotation_degrees': 0.0, 'zoom_range': 0.0, 'shift_range': 0.0}
  bound, name = {'rotation': (np.deg2rad(10), 'rotation_degrees'),
                 'zoom': (0.1, 'zoom_range'),
                 'shift': (0.1 * 32, 'shift_range')}[which]
  ranges[name] = {'rotation_degrees': 10.0}.get(name, 0.1)
  params = augment.random_params(jax.random.key(0), 2000, 32, **ranges)
  identity = augment.AffineParams.identity(2000)
  drawn = {'rotation': ('angle',), 'zoom': ('zoom_x', 'zoom_y'),
           'shift': ('shift_x', 'shift_y')}[which]
  for field in augment.AffineParams._fields:
    value = np.asarray(getattr(params, field))
    if field not in drawn:
      np.testing.assert_array_equal(value, getattr(identity, field))
      continue
    offset = value - (1.0 if which == 'zoom' else 0.0)
    assert offset.min() >= -bound - 1e-6 and offset.max() <= bound + 1e-6
    assert offset.min() < -0.95 * bound and offset.max() > 0.95 * bound
    assert abs(offset.mean()) < 0.05 * bound  # Uniform: centred.
  if which == 'zoom':  # Independent per axis, as Keras draws them.
    assert not np.allclose(params.zoom_x, params.zoom_y)


def test_preprocess_pads_then_standardizes_a_known_image():
  """No augmentation: pad 28 -> 32 with background 0 on every side, then
  (x - mean) / std, by hand."""
  from digits_jax import steps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
  for size in (28, 32):
    preprocess = steps.Preprocess(input_size=size, pixel_mean=33.0,
                                  pixel_std=78.0)
    pad = (size - 28) // 2
    want = (np.pad(images.astype(np.float32),
                   ((0, 0), (pad, pad), (pad, pad))) - 33.0) / 78.0
    np.testing.assert_allclose(np.asarray(preprocess(jnp.asarray(images))),
                               want[..., None], rtol=1e-6, atol=1e-6)


def test_preprocess_augments_the_padded_image_before_standardizing():
  """The order is pad, warp, standardize, with every configured range: the
  background that a shift or zoom brings in from outside the image is raw 0,
  standardized like the rest (-mean / std), not a standardized 0."""
  from digits_jax import steps  # pylint: disable=g-import-not-at-top
  preprocess = steps.Preprocess(input_size=32, pixel_mean=33.0,
                                pixel_std=78.0, rotation_degrees=7.0,
                                zoom_range=0.08, shift_range=0.12)
  images = jnp.full((64, 28, 28), 255, jnp.uint8)
  key = jax.random.key(3)
  got = np.asarray(jax.jit(preprocess)(images, key))[..., 0]
  params = augment.random_params(key, 64, 32, rotation_degrees=7.0,
                                 zoom_range=0.08, shift_range=0.12)
  padded = np.pad(np.full((64, 28, 28), 255.0, np.float32),
                  ((0, 0), (2, 2), (2, 2)))
  want = (np.asarray(augment.affine_warp(jnp.asarray(padded), params))
          - 33.0) / 78.0
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # Pure background (padding and outside) is exactly -mean / std.
  assert np.isclose(got, -33.0 / 78.0, atol=1e-6).mean() > 0.05


# --------------------------------------------------------------------------
# Elastic distortion (Simard et al., 2003).


def test_a_constant_displacement_looks_that_many_pixels_away():
  image = _dot_image(28, 10, 12)[None]
  displacement = np.zeros((1, 2, 28, 28), np.float32)
  displacement[0, 1] = 2.0  # Each output pixel looks 2 pixels to its right.
  out = np.asarray(augment.affine_warp(
      jnp.asarray(image), augment.AffineParams.identity(1),
      jnp.asarray(displacement)))[0]
  assert out[10, 10] == pytest.approx(255.0, abs=1e-3)
  assert out.sum() == pytest.approx(255.0, abs=1e-2)


def test_the_elastic_field_is_smooth_centred_and_scaled_by_alpha():
  key = jax.random.key(0)
  field = np.asarray(augment.elastic_displacements(key, 200, 28, alpha=1.0,
                                                   sigma=4.0))
  assert field.shape == (200, 2, 28, 28)
  assert abs(field.mean()) < 0.01
  # Smooth: neighbouring pixels move almost together; without smoothing
  # (a tiny sigma) they would move independently.
  def neighbour_correlation(f):
    return np.corrcoef(f[..., :-1].ravel(), f[..., 1:].ravel())[0, 1]
  assert neighbour_correlation(field) > 0.9
  rough = np.asarray(augment.elastic_displacements(key, 200, 28, alpha=1.0,
                                                   sigma=0.3))
  assert neighbour_correlation(rough) < 0.3
  # Each image and axis its own field; alpha scales it.
  assert np.abs(field[0, 0] - field[1, 0]).max() > 0.05
  assert np.abs(field[0, 0] - field[0, 1]).max() > 0.05
  doubled = np.asarray(augment.elastic_displacements(key, 200, 28, alpha=2.0,
                                                     sigma=4.0))
  np.testing.assert_allclose(doubled, 2 * field, rtol=1e-5, atol=1e-6)


def test_preprocess_adds_the_elastic_field_to_the_same_affine_draw():
  from digits_jax import steps  # pylint: disable=g-import-not-at-top
  images = jnp.asarray(np.random.default_rng(0).integers(
      0, 256, (8, 28, 28)), jnp.uint8)
  key = jax.random.key(3)
  base = dict(input_size=32, pixel_mean=0.0, pixel_std=1.0,
              rotation_degrees=10.0, zoom_range=0.1, shift_range=0.1)
  affine_only = np.asarray(steps.Preprocess(**base)(images, key))
  bent = np.asarray(steps.Preprocess(**base, elastic_alpha=30.0,
                                     elastic_sigma=4.0)(images, key))
  barely = np.asarray(steps.Preprocess(**base, elastic_alpha=1e-4,
                                       elastic_sigma=4.0)(images, key))
  assert np.abs(bent - affine_only).max() > 50
  # The affine parameters are the same draw with or without the field.
  np.testing.assert_allclose(barely, affine_only, atol=0.1)
