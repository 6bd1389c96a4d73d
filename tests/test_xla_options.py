"""The XLA:CPU library choices: same functions, options that take effect."""

import os

import jax
from jax import lax
import numpy as np
import pytest

from digits_jax import platform as platform_lib
from helpers import MNIST_DATA
from digits_jax import xla_options

NHWC = ('NHWC', 'HWIO', 'NHWC')

# What these tests look for (YNNPACK fusions, Eigen convolutions) exists in
# XLA:CPU's programs only.
pytestmark = pytest.mark.skipif(
    jax.default_backend() != 'cpu',
    reason='XLA:CPU compiler options; this backend keeps its defaults')

EIGEN = xla_options.cpu_eigen_convolutions()
# None where this jaxlib's XLA:CPU has no oneDNN (JAX 0.10).
ONEDNN = xla_options.cpu_onednn_convolutions()


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                  dimension_numbers=NHWC)


def test_auto_is_eigen_on_cpu_and_xla_is_the_defaults():
  cpu = lambda conv_impl: platform_lib.Platform('cpu', conv_impl)
  assert cpu('xla').compiler_options is None
  assert EIGEN and cpu('eigen').compiler_options == EIGEN
  assert cpu('auto').compiler_options == EIGEN
  with pytest.raises(ValueError, match='cpu_fast'):
    cpu('cpu_fast')


def test_jax_0_12_has_onednn():
  version = tuple(int(part) for part in jax.__version__.split('.')[:2])
  assert (ONEDNN is not None) == (version >= (0, 12))


@pytest.mark.parametrize('features, conv_impl, library', [
    ({'avx2', 'avx512f', 'avx512_bf16'}, 'auto', 'onednn'),  # AMD Zen 4.
    ({'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16'}, 'auto', 'onednn'),
    ({'avx2', 'avx512f'}, 'auto', 'eigen'),  # No bfloat16 products.
    ({'avx2'}, 'auto', 'eigen'),
    (set(), 'onednn', 'onednn'),
    ({'avx512_bf16'}, 'eigen', 'eigen'),
    ({'avx512_bf16'}, 'xla', None),
])
def test_the_cpus_instruction_sets_choose_the_convolutions(features,
                                                           conv_impl,
                                                           library):
  """oneDNN where the CPU multiplies bfloat16 in hardware and jaxlib has
  it; Eigen where jaxlib has no oneDNN."""
  platform = platform_lib.Platform('cpu', conv_impl,
                                   cpu_features=frozenset(features))
  if library == 'onednn' and ONEDNN is None:
    library = 'eigen'
  assert platform.conv_library == library
  assert platform.compiler_options == {
      'onednn': ONEDNN, 'eigen': EIGEN, None: None}[library]
  assert platform.cpu_weight_gradients == (library is not None)
  gpu = platform_lib.Platform('gpu', conv_impl,
                              cpu_features=frozenset(features))
  assert gpu.conv_library is None and gpu.compiler_options is None


def test_this_machines_cpu_is_read():
  features = platform_lib.cpu_features()
  if os.path.exists('/proc/cpuinfo'):
    assert features & {'sse2', 'neon', 'asimd', 'fp'}
  assert platform_lib.current().cpu_features == features


@pytest.mark.skipif(ONEDNN is None, reason='this jaxlib has no oneDNN: '
                    'test_jax_0_12_has_onednn says which have it')
def test_onednn_takes_the_convolutions_forward_and_both_gradients():
  x = np.ones((8, 24, 24, 32), np.float32)
  w = np.ones((5, 5, 32, 32), np.float32)
  def gradients(x, w):
    y, vjp = jax.vjp(_conv, x, w)
    return vjp(y)
  hlo = jax.jit(gradients, compiler_options=ONEDNN).lower(
      x, w).compile().as_text()
  assert hlo.count('custom_call_target="__onednn$convolution"') == 3


def test_eigen_takes_the_convolutions_from_ynnpack():
  # conv2's shapes: XLA:CPU hands this convolution to YNNPACK by default, as
  # a fusion named `ynn_fusion`.
  x = np.ones((8, 24, 24, 32), np.float32)
  w = np.ones((5, 5, 32, 32), np.float32)
  hlo = lambda options: jax.jit(_conv, compiler_options=options).lower(
      x, w).compile().as_text()
  assert 'ynn_fusion' not in hlo(EIGEN)
  assert 'convolution(' in hlo(EIGEN)


def test_eigen_leaves_the_reductions_to_ynnpack():
  # BatchNorm's sums over batch and space: XLA:CPU's own emitters split them
  # into reduce-window trees, slow and less accurate.
  x = jax.random.normal(jax.random.key(0), (16, 24, 24, 32)) + 3.0
  sums = lambda x: (x.sum((0, 1, 2)), (x * x).sum((0, 1, 2)))
  compiled = jax.jit(sums).lower(x).compile(
      compiler_options=EIGEN)
  hlo = compiled.as_text()
  assert 'ynn_fusion' in hlo and 'reduce-window' not in hlo
  exact = np.asarray(x, np.float64)
  for got, want in zip(compiled(x), (exact.sum((0, 1, 2)),
                                     (exact ** 2).sum((0, 1, 2)))):
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_unknown_options_fall_back_to_the_defaults():
  assert not xla_options._accepted((('xla_cpu_no_such_option', 'x'),))


@pytest.mark.parametrize('shape', [
    (4, 32, 32, 1, 5, 32),   # conv1 of the improved LeNet at 32x32.
    (4, 28, 28, 32, 5, 32),  # conv2.
    (3, 12, 12, 32, 3, 64),  # conv3.
    (2, 9, 7, 5, 2, 3),      # Odd sizes.
])
@pytest.mark.parametrize('library', ['eigen', 'onednn'])
def test_the_libraries_convolutions_match_the_defaults(shape, library):
  n, h, w_, c, k, o = shape
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (n, h, w_, c))
  w = jax.random.normal(keys[1], (k, k, c, o)) / np.sqrt(k * k * c)
  dy = jax.random.normal(keys[2], (n, h - k + 1, w_ - k + 1, o))

  def value_and_gradients(options):
    def f(x, w, dy):
      y, vjp = jax.vjp(_conv, x, w)
      return (y, *vjp(dy))
    return jax.jit(f, compiler_options=options)(x, w, dy)

  options = {'eigen': EIGEN, 'onednn': ONEDNN or EIGEN}[library]
  default = value_and_gradients(None)
  for got, want in zip(value_and_gradients(options), default):
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.slow
@pytest.mark.across_jax
def test_the_train_program_compiles_with_the_platforms_options():
  """train.build_program, which compiles the train loop's steps, passes the
  platform's options on to XLA: conv2's convolution (32 channels at 24x24)
  leaves YNNPACK under the Eigen options and stays there under XLA's
  defaults."""
  from digits_jax import config_checks  # pylint: disable=g-import-not-at-top
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import parallel  # pylint: disable=g-import-not-at-top
  from digits_jax import train  # pylint: disable=g-import-not-at-top
  config = config_checks.load_config('tiny')
  config.batch_size = 4 * len(jax.devices())
  config, members = members_lib.resolve(config)
  images = np.zeros((64, 28, 28), np.uint8)
  labels = np.zeros((64,), np.int32)

  def hlo(conv_impl):
    platform = platform_lib.Platform('cpu', conv_impl)
    devices = parallel.create(config, members.num_models)
    program = train.build_program(config, members, devices, platform,
                                  MNIST_DATA)
    state = program.init_state(members, jax.random.key(0))
    batch_indices = np.zeros((1, config.batch_size), np.int32)
    return program.update.lower(
        devices.place_state(state), devices.replicate(images),
        devices.replicate(labels), devices.shard_batch_indices(batch_indices),
        jax.random.key(1)).compile().as_text()

  def ynn_convolutions(text):
    # YNNPACK fusions whose root is a convolution (its op_name names it).
    return [line for line in text.splitlines()
            if 'ynn_fusion' in line.split('= ')[0]
            and 'conv_general_dilated"' in line.split('op_name=')[-1]]

  assert not ynn_convolutions(hlo('eigen'))
  assert ynn_convolutions(hlo('xla'))
