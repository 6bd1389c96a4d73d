"""A 'VALID' convolution that XLA:CPU runs several times faster.

Measured on the 2-core development machine (jax 0.10, the improved LeNet's
5x5 32->32 convolution at batch 128 on its 24x24 input, 2.6 GFLOP per pass;
`python scripts/conv_profile.py --batch=128 --size=24`; this VM's speed
drifts by up to 1.5x, so the figures are ranges over its faster and slower
hours):

                     XLA                           here
  forward            ~100-140 ms (~20-26 GFLOP/s)  ~25-37 ms (`_conv_by_columns`)
  input gradient     ~20-30 ms   (~90-130)         the same (XLA's)
  weight gradient    ~200-245 ms (~11-13)          ~27-44 ms (`_weight_gradient_rows`)

XLA:CPU hands convolutions to YNNPACK, which is fast on padded ones and slow
on unpadded ones and on the weight gradient JAX derives for them. So:

* the forward pass stacks the KW column offsets of the input on its channels
  and does one well-shaped matmul per chunk of images (for layers with few
  input channels, such as conv1, YNNPACK's padded convolution cropped to the
  'VALID' part is faster and is used);
* the input gradient is XLA's transpose of that padded convolution;
* the weight gradient is one matmul per chunk of images of the row-stacked
  input against the column-shifted output gradient.

The chunks run under `lax.scan`, so that one chunk's stacked operands are live
at a time and stay in cache: unrolled, XLA schedules all of them first and
the same matmuls ran at half the speed. The result is the same function as
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
# The forward pass stacks KW*C input channels; below this many the matmul is
# too thin and YNNPACK's padded convolution wins (conv1: 5).
_MIN_STACKED_CHANNELS = 16
# Images per chunk: as many as keep a chunk's stacked operand within this
# many bytes. For conv2 at batch 128 that is 16 images (8 and 16 measured
# best, 4 and 32 10% slower); conv3 and conv4 fit whole.
_CHUNK_BYTES = 5 * 2**20


def _padded_then_cropped(x, w):
  y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                               dimension_numbers=_NHWC)
  return y[:, 1:-1, 1:-1, :]


def _scan_over_chunks(f, bytes_per_image, *arrays):
  """f over chunks of the images of `arrays`, in a scan; returns f's results
  stacked on a new leading axis, one entry per chunk.

  One device only (below). Chunk k holds every num_chunks-th image from
  image k on, so that the chunks divide the batch the way a device mesh
  would (contiguous chunks made GSPMD gather the batch). The batch is
  zero-padded to equal chunks; zero images give zero weight gradients, and
  `_forward_value` drops their outputs.
  """
  n = arrays[0].shape[0]
  if jax.device_count() > 1:
    # One chunk wherever several devices share the batch. Across processes
    # (CPU collectives over gloo) every process must issue its all-reduces in
    # the same order, and with this loop in the program they did not (a gloo
    # 'collective mismatch' abort in tests/test_parallel.py); and one
    # computation for every device count keeps a model trained on 1, 2 or 8
    # devices the same to float32 rounding.
    return f(*arrays)[None]
  num_chunks = -(-n // max(1, _CHUNK_BYTES // bytes_per_image))
  chunk = -(-n // num_chunks)  # Equal chunks, the least padding.
  padding = num_chunks * chunk - n

  def split(a):
    if padding:
      a = jnp.pad(a, [(0, padding)] + [(0, 0)] * (a.ndim - 1))
    return jnp.swapaxes(a.reshape(chunk, num_chunks, *a.shape[1:]), 0, 1)

  _, results = lax.scan(lambda _, chunk_arrays: (None, f(*chunk_arrays)),
                        None, tuple(split(a) for a in arrays))
  return results


def _conv_by_columns(x, w):
  """The 'VALID' convolution as one [N*H*OW, KW*C] x [KW*C, KH*O] matmul.

  y[n, h, w] = sum over (i, j) of x[n, h+i, w+j] w[i, j]: stacking the KW
  column offsets of x on its channels and the KH kernel rows of w on its
  output features computes every (row offset, kernel row) product at once;
  the output row h sums the products of input row h+i with kernel row i.
  It does H/OH times the minimal FLOPs (1.2x for conv2).
  """
  n, height, _, channels = x.shape
  kh, kw, _, features = w.shape
  out_h, out_w = height - kh + 1, x.shape[2] - kw + 1
  columns = jnp.concatenate([x[:, :, j:j + out_w] for j in range(kw)],
                            axis=-1)
  kernel = w.transpose(1, 2, 0, 3).reshape(kw * channels, kh * features)
  products = jnp.matmul(columns.reshape(-1, kw * channels), kernel,
                        preferred_element_type=jnp.float32)
  products = products.reshape(n, height, out_w, kh, features)
  y = sum(products[:, i:i + out_h, :, i] for i in range(kh))
  return y.astype(jnp.result_type(x, w))


def _forward_value(x, w):
  n, height, width, channels = x.shape
  kw = w.shape[1]
  if kw * channels < _MIN_STACKED_CHANNELS:
    return _padded_then_cropped(x, w)
  bytes_per_image = height * (width - kw + 1) * kw * channels * x.itemsize
  y = _scan_over_chunks(lambda x: _conv_by_columns(x, w), bytes_per_image, x)
  # [chunk k, position i] is image i * num_chunks + k.
  return jnp.swapaxes(y, 0, 1).reshape(-1, *y.shape[2:])[:n]


@jax.custom_vjp
def conv_valid_nhwc(x: jax.Array, w: jax.Array) -> jax.Array:
  """Stride-1 'VALID' convolution of x [N, H, W, C] with w [KH, KW, C, O]."""
  return _forward_value(x, w)


def _forward(x, w):
  return _forward_value(x, w), (x, w)


def _weight_gradient(x, dy, kh, kw):
  """dL/dw [KH, KW, C, O] of the 'VALID' convolution, as matmuls.

  Few patch rows (KH*KW*C, e.g. conv1's 25): one matmul of the transposed
  patches [KH*KW*C, N*OH*OW] with dy. Otherwise the row-stacked form of
  `_weight_gradient_rows`, over chunks of images small enough that its
  operands stay in cache.
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
  bytes_per_image = out_h * x.shape[2] * kh * channels * x.itemsize
  return _scan_over_chunks(
      functools.partial(_weight_gradient_rows, kh=kh, kw=kw),
      bytes_per_image, x, dy).sum(axis=0)


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

