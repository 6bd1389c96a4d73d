import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from digits_jax import config_checks
from digits_jax import cpu_kernels
from digits_jax import models
from digits_jax import recipe
from digits_jax import steps
from digits_jax import platform as platform_lib
from digits_jax.errors import UserError
from digits_jax.models import improved_lenet
from digits_jax.models import lenet5
from helpers import MNIST_DATA

# The XLA:CPU choices, whatever backend runs the tests (the functions they
# compile run on the CPU backend only when it is the default).
CPU = platform_lib.Platform('cpu')


def _counts(model, size):
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 1)),
                         train=False))
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  return count(variables['params']), count(variables.get('batch_stats', {}))


def test_improved_lenet_matches_the_articles_keras_summary():
  # Keras: 390,562 parameters = 389,434 trainable + 1,128 BatchNorm statistics.
  trainable, stats = _counts(improved_lenet.ImprovedLeNet(), 32)
  assert (trainable, stats) == (389_434, 1_128)


def test_lenet5_parameter_count():
  # conv 156 + conv 2,416 + dense 48,120 + 10,164 + 850 at 32x32 input.
  assert _counts(lenet5.LeNet5(), 32) == (61_706, 0)


def _create(name, size=28, **kwargs):
  return models.create(name, input_shape=(size, size, 1), num_classes=10,
                       dtype=jnp.float32, **kwargs)


def test_the_built_in_models_are_the_packages_model_files():
  assert {'improved_lenet', 'lenet5'} <= set(models.built_in_names())
  assert not {'linen_adapter', 'nnx_adapter'} & set(models.built_in_names())


@pytest.mark.parametrize('name', models.built_in_names())
@pytest.mark.parametrize('size', [28, 32])
def test_logits_shape(name, size):
  model = _create(name, size)
  x = jnp.zeros((3, size, size, 1))
  params, batch_stats = model.init(jax.random.key(0))
  logits = model.apply_eval({'params': params, 'batch_stats': batch_stats}, x)
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32
  logits, _ = model.apply_train(params, batch_stats, x, jax.random.key(1))
  assert logits.shape == (3, 10) and logits.dtype == jnp.float32


def test_dropout_and_batchnorm_only_in_training():
  model = improved_lenet.ImprovedLeNet()
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  eval_a = model.apply(variables, x, train=False)
  eval_b = model.apply(variables, x, train=False)
  assert jnp.array_equal(eval_a, eval_b)
  train_a, updates = model.apply(variables, x, train=True,
                                 mutable=['batch_stats'],
                                 rngs={'dropout': jax.random.key(2)})
  train_b, _ = model.apply(variables, x, train=True, mutable=['batch_stats'],
                           rngs={'dropout': jax.random.key(3)})
  assert not jnp.allclose(train_a, train_b)  # Different dropout masks.
  old = variables['batch_stats']['bn2']['mean']
  new = updates['batch_stats']['bn2']['mean']
  # Keras momentum 0.99: the running mean moves 1% of the way.
  assert not jnp.allclose(old, new)


def test_unknown_model_is_a_user_error():
  with pytest.raises(UserError, match="'resnet' is not a model; choose one "
                     'of .*improved_lenet.*lenet5'):
    _create('resnet')


@pytest.mark.parametrize('name', models.built_in_names())
def test_l2_regularized_layers_exist_in_the_model(name):
  model = _create(name)
  state = steps.create_train_state(model, optax.identity(), jax.random.key(0))
  assert model.l2_layers is not None  # A built-in names its own (or none).
  for layer in model.l2_layers:
    assert 'kernel' in state.params[layer]


@pytest.mark.parametrize('shape', [(2, 24, 24, 3), (2, 7, 9, 4)])
def test_max_pool_2x2_matches_flax_max_pool_and_its_gradient(shape):
  import flax.linen as nn
  import numpy as np
  x = jax.random.normal(jax.random.key(0), shape)
  reference = lambda x: nn.max_pool(x, (2, 2), (2, 2))
  np.testing.assert_array_equal(cpu_kernels.max_pool_2x2(x), reference(x))
  loss = lambda pool: jax.grad(lambda x: (pool(x) ** 3).sum())(x)
  np.testing.assert_allclose(loss(cpu_kernels.max_pool_2x2), loss(reference),
                             rtol=1e-6)


def test_max_pool_2x2_sends_a_tied_windows_gradient_to_its_first_element():
  import numpy as np
  x = np.zeros((1, 4, 4, 1), np.float32)
  x[0, 2, 3, 0] = 1.0  # One window with a single max; three all tied.
  grad = jax.grad(lambda x: cpu_kernels.max_pool_2x2(x).sum())(x)[0, :, :, 0]
  np.testing.assert_array_equal(
      grad, [[1, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]])


def _conv_value_and_gradients(conv, x, w, dy, options):
  def f(x, w, dy):
    y, vjp = jax.vjp(conv, x, w)
    return (y, *vjp(dy))
  return jax.jit(f, compiler_options=options)(x, w, dy)


@pytest.mark.parametrize('conv_impl', ['auto', 'xla'])
@pytest.mark.parametrize('shape,padding', [
    ((4, 24, 24, 32, 5, 32), 'VALID'),  # conv2 of the improved LeNet.
    ((3, 12, 12, 32, 3, 64), 'VALID'),  # conv3.
    ((2, 9, 7, 5, 2, 3), 'VALID'),      # Odd sizes.
    ((2, 9, 7, 5, 3, 3), 'SAME'),
    ((2, 9, 7, 5, 3, 3), ((2, 0), (1, 1))),
])
def test_conv_with_cpu_weight_gradient_matches_lax_conv(shape, padding,
                                                         conv_impl):
  n, h, w_, c, k, o = shape
  keys = jax.random.split(jax.random.key(0), 3)
  # A ReLU'd input, as the models feed it: the producer the transpose is
  # kept apart from.
  x = jax.nn.relu(jax.random.normal(keys[0], (n, h, w_, c)))
  w = jax.random.normal(keys[1], (k, k, c, o)) / np.sqrt(k * k * c)
  nhwc = ('NHWC', 'HWIO', 'NHWC')
  conv = lambda conv_fn: lambda x, w: conv_fn(
      x, w, (1, 1), padding, dimension_numbers=nhwc)
  y = conv(jax.lax.conv_general_dilated)(x, w)
  dy = jax.random.normal(keys[2], y.shape)
  options = platform_lib.Platform('cpu', conv_impl).compiler_options
  got = _conv_value_and_gradients(
      conv(cpu_kernels.conv_with_cpu_weight_gradient), x, w, dy, options)
  want = _conv_value_and_gradients(
      conv(jax.lax.conv_general_dilated), x, w, dy, options)
  for g, wanted in zip(got, want):
    assert g.shape == wanted.shape
    np.testing.assert_allclose(g, wanted, rtol=1e-5,
                               atol=1e-5 * float(np.abs(wanted).max()))


def test_conv_with_cpu_weight_gradient_leaves_other_convolutions_plain():
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 3))
  w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
  strided = lambda conv_fn: lambda x, w: conv_fn(
      x, w, (2, 2), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  dy = jnp.ones((2, 4, 4, 4))
  got = _conv_value_and_gradients(
      strided(cpu_kernels.conv_with_cpu_weight_gradient), x, w, dy, None)
  want = _conv_value_and_gradients(
      strided(jax.lax.conv_general_dilated), x, w, dy, None)
  for g, wanted in zip(got, want):
    np.testing.assert_array_equal(g, wanted)
  # One spatial dimension (nn.Conv on [N, L, C]).
  x1, w1 = x[:, 0], w[0]
  conv_1d = lambda conv_fn: conv_fn(x1, w1, (1,), 'VALID',
                                    dimension_numbers=('NHC', 'HIO', 'NHC'))
  np.testing.assert_array_equal(
      conv_1d(cpu_kernels.conv_with_cpu_weight_gradient),
      conv_1d(jax.lax.conv_general_dilated))


def test_cpu_weight_gradients_train_the_same_model():
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
  plain = improved_lenet.ImprovedLeNet()
  variables = plain.init(jax.random.key(0), x, train=False)

  def loss_and_grads(model):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                              mutable=['batch_stats'],
                              rngs={'dropout': jax.random.key(2)})
      return jnp.sum(jnp.sin(logits))
    return jax.jit(jax.value_and_grad(loss),
                   compiler_options=CPU.compiler_options)(
                       variables['params'])

  (loss, grads), (want_loss, want_grads) = (
      loss_and_grads(improved_lenet.ImprovedLeNet(
          conv_general_dilated=cpu_kernels.conv_with_cpu_weight_gradient)),
      loss_and_grads(plain))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(
      g, w, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(w).max())),
               grads, want_grads)


@pytest.mark.parametrize('backend', ['cpu', 'gpu', 'tpu'])
@pytest.mark.parametrize('conv_impl', ['auto', 'eigen', 'xla'])
def test_train_build_takes_the_cpu_weight_gradients_with_eigen(conv_impl,
                                                               backend):
  config = config_checks.load_config('improved')
  config.conv_impl = conv_impl
  model, _ = recipe.build(config, platform_lib.Platform(backend, conv_impl),
                          MNIST_DATA)
  cpu_form = backend == 'cpu' and conv_impl != 'xla'
  assert model.module.conv_general_dilated is (
      cpu_kernels.conv_with_cpu_weight_gradient if cpu_form else None)


def test_batchnorm_uses_kerass_momentum_and_epsilon():
  """bn2 in training: normalizes conv2's output with the batch's mean and
  (biased) variance plus epsilon 1e-3, and moves its running statistics
  by momentum 0.99, computed here with NumPy from the captured input."""
  model = improved_lenet.ImprovedLeNet(dropout_rate=0.0)
  x = jax.random.normal(jax.random.key(1), (16, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  old = variables['batch_stats']['bn2']
  variables['batch_stats']['bn2'] = {'mean': old['mean'] + 0.3,
                                     'var': old['var'] * 2.0}
  _, state = model.apply(variables, x, train=True,
                         mutable=['batch_stats', 'intermediates'],
                         capture_intermediates=True)
  conv2 = np.asarray(state['intermediates']['conv2']['__call__'][0],
                     np.float64)
  bn2 = np.asarray(state['intermediates']['bn2']['__call__'][0])
  mean, var = conv2.mean((0, 1, 2)), conv2.var((0, 1, 2))
  np.testing.assert_allclose(bn2, (conv2 - mean) / np.sqrt(var + 1e-3),
                             rtol=1e-4, atol=1e-4)
  new = state['batch_stats']['bn2']
  np.testing.assert_allclose(new['mean'], 0.99 * 0.3 + 0.01 * mean,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(new['var'], 0.99 * 2.0 + 0.01 * var, rtol=1e-4)


def test_dropout_zeroes_the_rate_and_rescales_the_rest():
  layer = improved_lenet.Dropout(rate=0.25, deterministic=False)
  out = np.asarray(layer.apply({}, jnp.ones((400, 250)),
                               rngs={'dropout': jax.random.key(0)}))
  np.testing.assert_allclose(np.unique(out), [0.0, 1 / 0.75], rtol=1e-6)
  assert abs((out == 0).mean() - 0.25) < 0.01


def test_dropout_sits_after_each_conv_block_and_after_fc3():
  """The article's three Dropout(0.25): after the two pooled conv blocks
  ([N, 12, 12, 32] and [N, 4, 4, 64] at 32x32) and after fc3's ReLU."""
  model = improved_lenet.ImprovedLeNet(dropout_rate=0.25)
  x = jax.random.normal(jax.random.key(1), (64, 32, 32, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  _, state = model.apply(variables, x, train=True,
                         mutable=['batch_stats', 'intermediates'],
                         capture_intermediates=True,
                         rngs={'dropout': jax.random.key(2)})
  captured = state['intermediates']
  shapes = {name: captured[name]['__call__'][0].shape
            for name in captured if name.startswith('Dropout')}
  assert shapes == {'Dropout_0': (64, 12, 12, 32),
                    'Dropout_1': (64, 4, 4, 64), 'Dropout_2': (64, 84)}
  # The last one drops a quarter of fc3's ReLU'd units and scales the rest.
  fc3 = np.maximum(np.asarray(captured['bn_fc3']['__call__'][0]), 0)
  out = np.asarray(captured['Dropout_2']['__call__'][0])
  alive = fc3 > 0
  kept = out[alive] != 0
  np.testing.assert_allclose(out[alive][kept], fc3[alive][kept] / 0.75,
                             rtol=1e-5)
  assert abs(1 - kept.mean() - 0.25) < 0.04


def test_train_build_passes_the_config_to_the_model_and_preprocessing():
  config = config_checks.load_config('improved')
  config.update_from_flattened_dict({
      'dropout_rate': 0.4, 'rotation_degrees': 7.0, 'zoom_range': 0.05,
      'shift_range': 0.15, 'input_size': 28, 'elastic_alpha': 20.0,
      'elastic_sigma': 3.5})
  model, _ = recipe.build(config, platform_lib.current(), MNIST_DATA)
  preprocess = recipe.preprocessing(
      config, {'pixel_mean': 33.3, 'pixel_std': 78.6})
  assert model.module.dropout_rate == 0.4
  assert (preprocess.input_size, preprocess.rotation_degrees,
          preprocess.zoom_range, preprocess.shift_range,
          preprocess.pixel_mean, preprocess.pixel_std,
          preprocess.elastic_alpha, preprocess.elastic_sigma) == (
              28, 7.0, 0.05, 0.15, 33.3, 78.6, 20.0, 3.5)
