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
  from digits_jax import train  # pylint: disable=g-import-not-at-top
  preprocess = train.Preprocess(input_size=32, pixel_mean=0.0, pixel_std=1.0,
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
