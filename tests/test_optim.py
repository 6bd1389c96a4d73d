import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import plateau_state

from digits_jax import config_checks
from digits_jax import models
from digits_jax.models import improved_lenet
from digits_jax import optim


def _run_plateau(losses, patience=2, factor=0.2, min_scale=0.0):
  tx = optim.scale_by_plateau()
  state = tx.init({'w': jnp.zeros(3)})
  scales = []
  for loss in losses:
    state = optim.report_validation_loss(
        state, jnp.float32(loss), factor=factor, patience=patience,
        min_delta=1e-4, min_scale=min_scale)
    scales.append(float(optim.plateau_scale(state)))
  return scales


def test_plateau_cuts_after_patience_epochs_without_improvement():
  # Improves for 3 epochs, then 2 bad epochs -> cut, 1 bad, 1 good,
  # 2 bad -> second cut.
  losses = [1.0, 0.8, 0.7, 0.75, 0.71, 0.72, 0.6, 0.65, 0.61]
  expected = [1, 1, 1, 1, 0.2, 0.2, 0.2, 0.2, 0.04]
  np.testing.assert_allclose(_run_plateau(losses), expected, rtol=1e-6)


def test_plateau_ignores_improvements_below_min_delta_and_respects_floor():
  losses = [1.0, 0.99995, 0.99991, 0.9999, 0.99989, 0.99988]
  scales = _run_plateau(losses, patience=1, factor=0.1, min_scale=0.005)
  np.testing.assert_allclose(scales, [1, 0.1, 0.01, 0.005, 0.005, 0.005],
                             rtol=1e-6)


def test_plateau_scale_multiplies_updates():
  tx = optim.scale_by_plateau()
  state = tx.init(None)
  state = optim.report_validation_loss(state, 1.0, factor=0.5, patience=1,
                                       min_delta=0, min_scale=0)
  state = optim.report_validation_loss(state, 2.0, factor=0.5, patience=1,
                                       min_delta=0, min_scale=0)
  updates, _ = tx.update({'w': jnp.ones(2)}, state)
  np.testing.assert_allclose(updates['w'], [0.5, 0.5])


def test_l2_applies_kerass_gradient_to_the_two_conv_kernels_only():
  config = config_checks.load_config('improved')
  params = {name: {'kernel': jnp.full((2, 2), 3.0), 'bias': jnp.ones(2)}
            for name in ('conv1', 'conv2', 'conv3', 'fc1')}
  l2_only = optax.add_decayed_weights(
      2 * config.l2,
      mask=lambda p: optim.l2_mask(p, improved_lenet.L2_REGULARIZED))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = l2_only.update(zeros, l2_only.init(params), params)
  # d/dw of lam * w^2 = 2 * lam * w = 2 * 5e-4 * 3.
  np.testing.assert_allclose(updates['conv1']['kernel'], 3e-3, rtol=1e-6)
  np.testing.assert_allclose(updates['conv3']['kernel'], 3e-3, rtol=1e-6)
  for name in ('conv2', 'fc1'):
    np.testing.assert_array_equal(updates[name]['kernel'], 0)
  for name in params:
    np.testing.assert_array_equal(updates[name]['bias'], 0)


def test_optimizer_state_carries_the_plateau_and_lr_follows_it():
  config = config_checks.load_config('improved')
  params = {'conv1': {'kernel': jnp.ones((2,))}}
  tx = optim.create_optimizer(config, improved_lenet.L2_REGULARIZED, 100)
  state = tx.init(params)
  grads = {'conv1': {'kernel': jnp.ones((2,))}}
  first, _ = tx.update(grads, state, params)
  for loss in (1.0, 1.0, 1.0):
    state = optim.report_epoch(state, loss, config)
  assert float(plateau_state(state).scale) == np.float32(0.2)
  second, _ = tx.update(grads, state, params)
  np.testing.assert_allclose(second['conv1']['kernel'],
                             0.2 * first['conv1']['kernel'], rtol=1e-5)


def test_onecycle_warms_up_to_the_peak_then_decays_to_the_floor():
  config = config_checks.load_config('improved')
  config.lr_schedule = 'onecycle'
  config.learning_rate, config.min_learning_rate = 4e-3, 1e-6
  config.warmup_fraction = 0.25
  total = 200
  rate = lambda step: optim.current_learning_rate(None, step, config, total)
  assert rate(0) == pytest.approx(4e-3 / 25)
  assert rate(50) == pytest.approx(4e-3)
  assert rate(0) < rate(25) < rate(50) > rate(120) > rate(199)
  assert rate(total) == pytest.approx(1e-6)
  # The updates follow the schedule: with a constant gradient Adam's
  # direction is fixed, so update(step) / rate(step) is constant.
  params = {'fc1': {'kernel': jnp.ones((3,))}}
  tx = optim.create_optimizer(config, improved_lenet.L2_REGULARIZED, total)
  state = tx.init(params)
  grads = {'fc1': {'kernel': jnp.full((3,), 0.5)}}
  ratios = []
  for step in range(60):
    updates, state = tx.update(grads, state, params)
    ratios.append(float(updates['fc1']['kernel'][0]) / rate(step))
  np.testing.assert_allclose(ratios, ratios[0], rtol=1e-4)
  assert ratios[0] == pytest.approx(-1.0, rel=1e-3)


def _numpy_keras_recipe(params, grads_per_step, *, lr, l2, regularized, b1,
                        b2, eps):
  """The article's optimizer written out by hand: the gradient of
  l2 * ||w||^2 (2 * l2 * w) added to the regularized kernels' gradients,
  then Adam (bias-corrected moments), then the learning rate."""
  params = {k: np.array(v, np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in params.items()}
  v = {k: np.zeros_like(p) for k, p in params.items()}
  for t, grads in enumerate(grads_per_step, start=1):
    for name in params:
      g = np.asarray(grads[name], np.float64)
      if name in regularized:
        g = g + 2 * l2 * params[name]
      m[name] = b1 * m[name] + (1 - b1) * g
      v[name] = b2 * v[name] + (1 - b2) * g * g
      m_hat, v_hat = m[name] / (1 - b1**t), v[name] / (1 - b2**t)
      params[name] = params[name] - lr * m_hat / (np.sqrt(v_hat) + eps)
  return params


def test_the_optimizer_chain_equals_a_hand_written_keras_recipe():
  """L2 before Adam (coupled), on conv1's and conv3's kernels only, Adam's
  constants, the learning rate: against a NumPy re-derivation over several
  steps whose gradients change scale (so that the order of L2 and Adam
  matters)."""
  config = config_checks.load_config('improved')
  config.l2 = 0.05  # Large enough that L2's share of the update is visible.
  rng = np.random.default_rng(0)
  shapes = {('conv1', 'kernel'): (3, 3), ('conv1', 'bias'): (3,),
            ('conv2', 'kernel'): (3, 3), ('conv3', 'kernel'): (4,),
            ('fc1', 'kernel'): (2, 2)}
  flat = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
  nest = lambda d: {layer: {n: jnp.asarray(d[(l, n)]) for (l, n) in d
                            if l == layer} for layer, _ in d}
  params = nest(flat)
  steps = [{k: (rng.normal(size=s) * 10.0**(i % 3 - 2)).astype(np.float32)
            for k, s in shapes.items()} for i in range(6)]
  tx = optim.create_optimizer(config, improved_lenet.L2_REGULARIZED, 100)
  state = tx.init(params)
  for grads in steps:
    updates, state = tx.update(nest(grads), state, params)
    params = optax.apply_updates(params, updates)
  want = _numpy_keras_recipe(
      flat, steps, lr=1e-3, l2=0.05,
      regularized={('conv1', 'kernel'), ('conv3', 'kernel')},
      b1=0.9, b2=0.999, eps=1e-7)
  for (layer, name), value in want.items():
    np.testing.assert_allclose(params[layer][name], value, rtol=2e-5,
                               atol=1e-7, err_msg=f'{layer}/{name}')


def test_l2_reaches_exactly_conv1_and_conv3_kernels_of_the_real_model():
  """The article regularizes the first convolution of each block: with a
  zero loss gradient, only those two kernels move."""
  config = config_checks.load_config('improved')
  model = models.create('improved_lenet', input_shape=(32, 32, 1),
                        num_classes=10, dtype=jnp.float32)
  params, _ = model.init(jax.random.key(0))
  tx = optim.create_optimizer(config, model.l2_layers, 10)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params),
                         params)
  moved = {'/'.join(k.key for k in path)
           for path, u in jax.tree_util.tree_leaves_with_path(updates)
           if np.any(np.asarray(u) != 0)}
  assert moved == {'conv1/kernel', 'conv3/kernel'}


def test_report_epoch_applies_the_articles_plateau_constants():
  """ReduceLROnPlateau(factor=0.2, patience=2) with improved.py's config:
  two epochs without improvement cut the rate to a fifth, down to the
  floor min_learning_rate / learning_rate."""
  config = config_checks.load_config('improved')
  tx = optim.create_optimizer(config, improved_lenet.L2_REGULARIZED, 10)
  state = tx.init({'w': jnp.zeros(2)})
  rates = []
  for loss in [0.5, 0.4, 0.4, 0.4] + [0.4] * 20:
    state = optim.report_epoch(state, loss, config)
    rates.append(optim.current_learning_rate(state, 0, config, 10))
  np.testing.assert_allclose(rates[:6], [1e-3, 1e-3, 1e-3, 2e-4, 2e-4, 4e-5],
                             rtol=1e-6)
  assert rates[-1] == pytest.approx(1e-6, rel=1e-5)
