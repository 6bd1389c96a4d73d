"""On-device augmentation: one random affine warp per image, bilinear sampling.

The article uses Keras' ImageDataGenerator (rotation 10 degrees, zoom 0.1,
width and height shift 0.1). Here the same transforms are composed into one
affine map per image and applied inside the compiled train step, so
augmentation costs no host time and needs no host-side RNG.

Conventions: images are [B, H, W] (raw pixel values, background 0, which is
also what falls in from outside the image). Angles are radians, positive
counter-clockwise as seen on screen; zoom > 1 enlarges the digit; shifts are in
pixels, positive right (x) and down (y). All transforms act about the image
centre.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class AffineParams(NamedTuple):
  """Per-image transform parameters, each of shape [B]."""
  angle: jax.Array
  zoom_x: jax.Array
  zoom_y: jax.Array
  shift_x: jax.Array
  shift_y: jax.Array

  @classmethod
  def identity(cls, batch_size: int) -> 'AffineParams':
    zeros, ones = jnp.zeros((batch_size,)), jnp.ones((batch_size,))
    return cls(zeros, ones, ones, zeros, zeros)


def _bilinear_sample(image, src_y, src_x):
  """image[src_y, src_x] with bilinear interpolation; zero outside."""
  height, width = image.shape
  y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
  wy, wx = src_y - y0, src_x - x0
  y0, x0 = y0.astype(jnp.int32), x0.astype(jnp.int32)

  def tap(y, x):
    inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
    value = image[jnp.clip(y, 0, height - 1), jnp.clip(x, 0, width - 1)]
    return jnp.where(inside, value, jnp.zeros_like(value))

  return ((1 - wy) * (1 - wx) * tap(y0, x0) + (1 - wy) * wx * tap(y0, x0 + 1)
          + wy * (1 - wx) * tap(y0 + 1, x0) + wy * wx * tap(y0 + 1, x0 + 1))


def _warp_one(image, angle, zoom_x, zoom_y, shift_x, shift_y):
  height, width = image.shape
  cy, cx = (height - 1) / 2, (width - 1) / 2
  out_y, out_x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32),
                              indexing='ij')
  # Walk each output pixel back to where it comes from: undo the shift, the
  # rotation, then the zoom.
  y, x = out_y - cy - shift_y, out_x - cx - shift_x
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x, y = cos * x - sin * y, sin * x + cos * y
  return _bilinear_sample(image, y / zoom_y + cy, x / zoom_x + cx)


def affine_warp(images: jax.Array, params: AffineParams) -> jax.Array:
  """Warps each image of [B, H, W] by its own parameters."""
  warped = jax.vmap(_warp_one)(images.astype(jnp.float32), *params)
  return warped.astype(images.dtype)


def random_params(key: jax.Array, batch_size: int, image_size: int, *,
                  rotation_degrees: float, zoom_range: float,
                  shift_range: float) -> AffineParams:
  """Uniform parameters as Keras' ImageDataGenerator draws them."""
  keys = jax.random.split(key, 5)

  def uniform(k, bound, center=0.0):
    return jax.random.uniform(k, (batch_size,), minval=center - bound,
                              maxval=center + bound)

  max_shift = shift_range * image_size
  return AffineParams(
      angle=uniform(keys[0], jnp.deg2rad(rotation_degrees)),
      zoom_x=uniform(keys[1], zoom_range, 1.0),
      zoom_y=uniform(keys[2], zoom_range, 1.0),
      shift_x=uniform(keys[3], max_shift),
      shift_y=uniform(keys[4], max_shift),
  )

