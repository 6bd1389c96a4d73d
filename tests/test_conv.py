import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _reference(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                  dimension_numbers=NHWC)


@pytest.mark.parametrize('shape,chunk_bytes', [
    ((4, 32, 32, 1, 5, 32), None),   # conv1 of the improved LeNet.
    ((4, 28, 28, 32, 5, 32), None),  # conv2.
    ((3, 12, 12, 32, 3, 64), None),  # conv3.
    ((2, 9, 7, 5, 2, 3), None),      # Odd sizes.
    # Chunks of 3 images, the last one part padding (the forward pass and
    # the weight gradient both stack 7*9*3*16*4 bytes per image).
    ((10, 9, 9, 16, 3, 8), 3 * 7 * 9 * 3 * 16 * 4),
])
def test_fast_conv_matches_lax_in_value_and_gradients(shape, chunk_bytes,
                                                      monkeypatch):
  if chunk_bytes:
    monkeypatch.setattr(conv, '_CHUNK_BYTES', chunk_bytes)
  n, h, w_, c, k, o = shape
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, h, w_, c))
  w = jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c)
  dy = jax.random.normal(kd, (n, h - k + 1, w_ - k + 1, o))

  y_ref, vjp_ref = jax.vjp(_reference, x, w)
  y, vjp = jax.vjp(jax.jit(conv.conv_valid_nhwc), x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  dx, dw = vjp(dy)
  dx_ref, dw_ref = vjp_ref(dy)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
  # The weight gradient sums N*H*W products: judge both float32 results
  # against float64 and ask ours to be as accurate as XLA's.
  dw_exact = _weight_gradient_float64(np.asarray(x), np.asarray(dy), k)
  error, ref_error = (np.abs(np.asarray(g, np.float64) - dw_exact).max()
                      for g in (dw, dw_ref))
  assert error <= 2 * ref_error + 1e-6 * np.abs(dw_exact).max(), (
      error, ref_error)


def _weight_gradient_float64(x, dy, k):
  x, dy = x.astype(np.float64), dy.astype(np.float64)
  out_h, out_w = dy.shape[1:3]
  return np.stack([np.stack([
      np.einsum('nhwc,nhwo->co', x[:, i:i + out_h, j:j + out_w], dy)
      for j in range(k)]) for i in range(k)])


def test_drop_in_takes_the_fast_path_only_where_it_applies():
  x = jax.random.normal(jax.random.key(0), (2, 10, 10, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  dims = lax.conv_dimension_numbers(x.shape, w.shape, NHWC)
  fast = jax.make_jaxpr(lambda x, w: conv.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=dims))(x, w)
  assert 'custom_vjp' in str(fast)
  for kwargs in (dict(window_strides=(2, 2), padding='VALID'),
                 dict(window_strides=(1, 1), padding='SAME')):
    got = conv.conv_general_dilated(x, w, dimension_numbers=dims, **kwargs)
    want = lax.conv_general_dilated(x, w, dimension_numbers=dims, **kwargs)
    np.testing.assert_array_equal(got, want)
    slow = jax.make_jaxpr(lambda x, w, kw=kwargs: conv.conv_general_dilated(
        x, w, dimension_numbers=dims, **kw))(x, w)
    assert 'custom_vjp' not in str(slow)
