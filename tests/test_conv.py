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


@pytest.mark.parametrize('shape', [
    (4, 32, 32, 1, 5, 32),   # conv1 of the improved LeNet.
    (4, 28, 28, 32, 5, 32),  # conv2.
    (3, 12, 12, 32, 3, 64),  # conv3.
    (2, 9, 7, 5, 2, 3),      # Odd sizes.
])
def test_fast_conv_matches_lax_in_value_and_gradients(shape):
  n, h, w_, c, k, o = shape
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (n, h, w_, c))
  w = jax.random.normal(kw, (k, k, c, o)) / np.sqrt(k * k * c)
  dy = jax.random.normal(kd, (n, h - k + 1, w_ - k + 1, o))

  y_ref, vjp_ref = jax.vjp(_reference, x, w)
  y, vjp = jax.vjp(jax.jit(conv.conv_valid_nhwc), x, w)
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(dy), vjp_ref(dy)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


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
