"""The deeper NNX network (digits_jax/models/deep_cnn.py) and its config."""

import jax
import jax.numpy as jnp
import numpy as np

from digits_jax import config_checks
from digits_jax import models


def _create(size=28, dropout_rate=0.4):
  return models.create('deep_cnn', input_shape=(size, size, 1),
                       num_classes=10, dtype=jnp.float32,
                       dropout_rate=dropout_rate)


def test_deep_cnn_has_the_originals_parameter_count():
  # Deotte's Keras summary: 327,242 parameters, 832 of them BatchNorm's
  # moving statistics.
  params, batch_stats = jax.eval_shape(_create().init, jax.random.key(0))
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  assert (count(params), count(batch_stats)) == (326_410, 832)


def test_deep_cnn_config_trains_it_without_l2_at_28x28():
  config = config_checks.load_config('deep_cnn')
  config_checks.validate(config, config_checks.default_config())
  assert (config.model, config.input_size, config.l2, config.dropout_rate) == (
      'deep_cnn', 28, 0.0, 0.4)


def test_deep_cnn_drops_out_in_training_only():
  model = _create()
  params, batch_stats = jax.jit(model.init)(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 28, 28, 1))
  a, _ = jax.jit(model.apply_train)(params, batch_stats, x, jax.random.key(2))
  b, _ = jax.jit(model.apply_train)(params, batch_stats, x, jax.random.key(3))
  assert not np.allclose(a, b)
  without, _ = jax.jit(_create(dropout_rate=0.0).apply_train)(
      params, batch_stats, x, jax.random.key(2))
  again, _ = jax.jit(_create(dropout_rate=0.0).apply_train)(
      params, batch_stats, x, jax.random.key(3))
  np.testing.assert_allclose(without, again, rtol=1e-6, atol=1e-6)
