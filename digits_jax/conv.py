"""A 'VALID' convolution that XLA:CPU runs several times faster.

Measured on the 2-core development machine (jax 0.10, the improved LeNet's
5x5 32->32 convolution at batch 128 on its 24x24 input, 2.6 GFLOP per pass;
`python scripts/conv_profile.py --batch=128 --size=24`):

                     XLA                     here
  forward            ~110 ms  (~24 GFLOP/s)  ~30-39 ms  (padded by 1, cropped)
  input gradient     ~20-27 ms (~100)        the same (XLA's, transposed)
  weight gradient    ~220 ms  (~12)          ~55-60 ms  (row-stacked matmuls)

XLA:CPU lowers an unpadded convolution, and the weight gradient JAX derives
for it, to a slow path; a padded one takes the fast path. So the forward pass
computes the convolution padded by one pixel and crops the border (the
cropped values are exactly the unpadded ones), the input gradient is XLA's
transpose of that, and the weight gradient is computed by matmuls (see
`_weight_gradient`). The result is the same function as
`lax.conv_general_dilated` to float32 rounding (tests/test_conv.py).

On GPU and TPU the plain convolution is already fast and is used instead.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp

_NHWC = ('NHWC', 'HWIO', 'NHWC')
# Up to this many patch rows (KH*KW*C) the weight gradient is one matmul
# over materialized patches; conv1's 25 measured 6x faster that way.
_MAX_PATCH_ROWS = 64
# Images per weight-gradient matmul: small enough to stay in cache.
_IMAGES_PER_CHUNK = 32


def _padded_then_cropped(x, w):
  y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                               dimension_numbers=_NHWC)
  return y[:, 1:-1, 1:-1, :]


@jax.custom_vjp
def conv_valid_nhwc(x: jax.Array, w: jax.Array) -> jax.Array:
  """Stride-1 'VALID' convolution of x [N, H, W, C] with w [KH, KW, C, O]."""
  return _padded_then_cropped(x, w)


def _forward(x, w):
  return _padded_then_cropped(x, w), (x, w)


def _weight_gradient(x, dy, kh, kw):
  """dL/dw [KH, KW, C, O] of the 'VALID' convolution, as matmuls.

  Few patch rows (KH*KW*C, e.g. conv1's 25): one matmul of the transposed
  patches [KH*KW*C, N*OH*OW] with dy. Otherwise the row-stacked form of
  `_weight_gradient_rows`, over chunks of images small enough that its
  operands stay in cache (on this machine 32 images took half the time of
  128 at once).
  """
  channels, features = x.shape[-1], dy.shape[-1]
  out_h, out_w = dy.shape[1:3]
  if channels * kh * kw <= _MAX_PATCH_ROWS:
    x_cnhw = jnp.transpose(x, (3, 0, 1, 2))
    patches = jnp.stack([x_cnhw[:, :, i:i + out_h, j:j + out_w]
                         for i in range(kh) for j in range(kw)])
    dw = jnp.matmul(patches.reshape(kh * kw * channels, -1),
                    dy.reshape(-1, features),
                    preferred_element_type=jnp.float32)
    return dw.reshape(kh, kw, channels, features)
  n = x.shape[0]
  return sum(_weight_gradient_rows(x[s:s + _IMAGES_PER_CHUNK],
                                   dy[s:s + _IMAGES_PER_CHUNK], kh, kw)
             for s in range(0, n, _IMAGES_PER_CHUNK))


def _weight_gradient_rows(x, dy, kh, kw):
  """The weight gradient as one [N*OH*W, KH*C]^T [N*OH*W, KW*O] matmul.

  dw[i, j] = sum over (n, h, w') of x[n, h+i, w', :] dy[n, h, w'-j, :]:
  stacking the KH row offsets of x on its channels and the KW column shifts
  of dy (zero-padded to x's width) on its features puts all KH*KW kernel
  offsets in one well-shaped matmul. It does W/OW times the minimal FLOPs
  (1.2x for conv2) but ran 2x faster than KH*KW thin matmuls, whose inputs
  (strided windows) XLA:CPU copies or, worse, fuses into a naive loop.
  """
  width, channels = x.shape[2:]
  out_h, out_w, features = dy.shape[1:]
  rows = jnp.concatenate([x[:, i:i + out_h] for i in range(kh)], axis=-1)
  dy = jnp.pad(dy, ((0, 0), (0, 0), (kw - 1, width - out_w), (0, 0)))
  shifted = jnp.concatenate(
      [dy[:, :, kw - 1 - j:kw - 1 - j + width] for j in range(kw)], axis=-1)
  dw = lax.dot_general(rows.reshape(-1, kh * channels),
                       shifted.reshape(-1, kw * features),
                       (((0,), (0,)), ((), ())),
                       preferred_element_type=jnp.float32)
  return dw.reshape(kh, channels, kw, features).transpose(0, 2, 1, 3)


def _backward(residuals, dy):
  x, w = residuals
  (dx,) = jax.linear_transpose(functools.partial(_padded_then_cropped, w=w),
                               x)(dy)
  dw = _weight_gradient(x, dy, *w.shape[:2]).astype(w.dtype)
  return dx, dw


conv_valid_nhwc.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Drop-in for `lax.conv_general_dilated` (as Flax's `nn.Conv` calls it)
  that takes the fast path for the stride-1, unpadded, undilated NHWC case
  and defers to XLA for everything else."""
  is_valid = padding == 'VALID' or (
      not isinstance(padding, str) and all(tuple(p) == (0, 0)
                                           for p in padding))
  ones = lambda v: v is None or all(s == 1 for s in v)
  if (is_valid and ones(window_strides) and ones(lhs_dilation) and
      ones(rhs_dilation) and feature_group_count == 1 and
      batch_group_count == 1 and lhs.ndim == 4 and
      dimension_numbers is not None and
      lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    y = conv_valid_nhwc(lhs, rhs)
    return y if preferred_element_type is None else y.astype(
        preferred_element_type)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)

