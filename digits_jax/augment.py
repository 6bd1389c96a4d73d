"""On-device augmentation: one random affine warp per image, bilinear sampling.

The article uses Keras' ImageDataGenerator (rotation 10 degrees, zoom 0.1,
width and height shift 0.1). Here the same transforms are composed into one
affine map per image and applied inside the compiled train step, so
augmentation costs no host time and needs no host-side RNG. Optionally an
elastic distortion (Simard, Steinkraus and Platt, 2003: a smoothed random
displacement per pixel) bends the strokes as different hands would, in the
same sampling pass.

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


def _warp_one(image, angle, zoom_x, zoom_y, shift_x, shift_y,
              displacement=None):
  height, width = image.shape
  cy, cx = (height - 1) / 2, (width - 1) / 2
  out_y, out_x = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32),
                              indexing='ij')
  if displacement is not None:
    # The elastic part: each output pixel first looks `displacement` pixels
    # away, then the affine map takes that point back into the source.
    out_y, out_x = out_y + displacement[0], out_x + displacement[1]
  # Walk each output pixel back to where it comes from: undo the shift, the
  # rotation, then the zoom.
  y, x = out_y - cy - shift_y, out_x - cx - shift_x
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x, y = cos * x - sin * y, sin * x + cos * y
  return _bilinear_sample(image, y / zoom_y + cy, x / zoom_x + cx)


def affine_warp(images: jax.Array, params: AffineParams,
                displacements: jax.Array | None = None) -> jax.Array:
  """Warps each image of [B, H, W] by its own parameters, and by its own
  elastic `displacements` [B, 2, H, W] (y, x in pixels) when given."""
  elastic = () if displacements is None else (displacements,)
  warped = jax.vmap(_warp_one)(images.astype(jnp.float32), *params, *elastic)
  return warped.astype(images.dtype)


def _gaussian_smoothing(size: int, sigma: float) -> jax.Array:
  """[size, size]: row i averages a line with Gaussian weights around i,
  renormalized where the window leaves the image (so the field keeps its
  scale up to the edges)."""
  positions = jnp.arange(size, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * ((positions[:, None] - positions[None, :]) /
                            sigma) ** 2)
  return weights / weights.sum(1, keepdims=True)


def elastic_displacements(key: jax.Array, batch_size: int, image_size: int, *,
                          alpha: float, sigma: float) -> jax.Array:
  """Simard et al.'s elastic field, [B, 2, H, W] in pixels: uniform noise in
  [-1, 1] per pixel and axis, smoothed by a Gaussian of `sigma` pixels (a
  small sigma tears the strokes, a large one only shifts them) and scaled
  by `alpha`. Separable smoothing as two small matmuls per field."""
  noise = jax.random.uniform(key, (batch_size, 2, image_size, image_size),
                             minval=-1.0, maxval=1.0)
  smoothing = _gaussian_smoothing(image_size, sigma)
  return alpha * jnp.einsum('ij,bajk,lk->bail', smoothing, noise, smoothing)


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

