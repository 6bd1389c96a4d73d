"""A user's own Flax module, Linen or NNX, given by import path: trained
with every feature through the command line, and each way it can fail to
fit said in one line before training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import config_checks
from digits_jax import members as members_lib
from digits_jax import models
from digits_jax import platform as platform_lib
from digits_jax import recipe
from digits_jax.errors import UserError
from helpers import MNIST_DATA, assert_one_line_error, run_main

LINEN, NNX = 'user_models:SmallLinenNet', 'user_models:SmallNnxNet'


def _create(name, **kwargs):
  return models.create(name, input_shape=(28, 28, 1), num_classes=10,
                       dtype=jnp.float32, **kwargs)


@pytest.mark.parametrize('name,fragments', [
    ('no_such_package.nets:Net', ['cannot import no_such_package.nets',
                                  'PYTHONPATH']),
    ('user_models:Missing', ["user_models has no 'Missing'"]),
    ('user_models:NotAModule', ['is not a Flax module class']),
    ('user_models:WrongOutput', ['returns float32[2, 5] for 2 digits',
                                 'logits [N, 10]']),
    ('user_models:KeepsACounter', ['variable collection(s) counters']),
    ('resnet50', ["'resnet50' is not a model", 'improved_lenet',
                  'package.module:ClassName']),
])
def test_a_model_that_does_not_fit_is_one_line(name, fragments):
  with pytest.raises(UserError) as raised:
    _create(name)
  message = str(raised.value)
  assert '\n' not in message
  for fragment in fragments:
    assert fragment in message, message


def test_a_dropout_the_model_does_not_take_is_refused():
  with pytest.raises(UserError, match='takes no dropout_rate; set '
                     'config.dropout_rate=0'):
    _create(NNX, dropout_rate=0.25)


def test_an_nnx_model_cannot_sweep_a_traced_dropout():
  config = config_checks.load_config('tiny')
  config.update(model=NNX, dropout_rate=0.0, input_size=28,
                sweep='dropout_rate=0,0.1')
  config, members = members_lib.resolve(config)
  with pytest.raises(UserError, match='does not take dropout_rate as a '
                     'traced value'):
    recipe.build(config, platform_lib.current(), MNIST_DATA,
                 traced_keys=members.traced_keys)


def test_the_cli_says_a_bad_import_path_in_one_line(tmp_path):
  result = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}/w',
                    '--config.model=no_such_package:Net')
  assert_one_line_error(result, 'cannot import no_such_package')
  result = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}/w',
                    '--config.model=not a path')
  assert_one_line_error(result, "'not a path' is not a model")


@pytest.mark.parametrize('name', [LINEN, NNX])
def test_train_mode_draws_dropout_from_the_key_and_eval_mode_does_not(name):
  model = _create(name)
  params, batch_stats = jax.jit(model.init)(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (16, 28, 28, 1))
  train = jax.jit(model.apply_train)
  a, stats_a = train(params, batch_stats, x, jax.random.key(2))
  again, _ = train(params, batch_stats, x, jax.random.key(2))
  other, _ = train(params, batch_stats, x, jax.random.key(3))
  np.testing.assert_array_equal(a, again)
  if name == NNX:  # Its dropout is 0.2; the Linen one's rate is 0 here.
    assert not np.allclose(a, other)
  # BatchNorm's running statistics move in training, not in inference.
  assert not all(np.allclose(s, t) for s, t in zip(
      jax.tree.leaves(stats_a), jax.tree.leaves(batch_stats)))
  variables = {'params': params, 'batch_stats': batch_stats}
  first = jax.jit(model.apply_eval)(variables, x)
  np.testing.assert_array_equal(first, jax.jit(model.apply_eval)(variables,
                                                                  x))
  # Inference normalizes with the running statistics (initially 0 and 1),
  # not the batch's, and drops nothing: an image's logits do not depend on
  # the batch it comes in, and differ from training's.
  np.testing.assert_allclose(jax.jit(model.apply_eval)(variables, x[:2]),
                             first[:2], rtol=1e-5, atol=1e-5)
  assert not np.allclose(first, a, atol=1e-3)


@pytest.mark.slow
@pytest.mark.across_jax  # The NNX and Linen APIs move between Flax versions.
@pytest.mark.parametrize('name', [LINEN, NNX])
def test_a_users_module_trains_sweeps_evaluates_exports_and_predicts(
    tmp_path, mnist_data_dir, name):
  """A 2-member sweep of the user's module through the command line, then
  eval, export (run by plain JAX) and predict, each with it."""
  workdir = tmp_path / 'run'
  common = ['--config=configs/tiny.py', f'--config.data_dir={mnist_data_dir}',
            f'--config.model={name}', '--config.dropout_rate=0.0',
            '--config.input_size=28', '--config.num_epochs=1',
            '--config.sweep=learning_rate=1e-3,3e-3', f'--workdir={workdir}']
  trained = run_main(*common)
  assert trained.returncode == 0, trained.stderr[-3000:]
  with open(workdir / 'sweep.json') as f:
    assert len(json.load(f)['members']) == 2
  evaluated = run_main(*common, '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(workdir / 'eval_test.json') as f:
    report = json.load(f)
  assert report['model'] == name and report['num_models'] == 2
  assert report['accuracy'] > 0.5  # 1,200 digits, one epoch: it learned.
  artifact = tmp_path / 'model.jax'
  exported = run_main(*common, '--mode=export', f'--output={artifact}',
                      '--member=best')
  assert exported.returncode == 0, exported.stderr[-3000:]
  digits = _test_digits(mnist_data_dir)
  np.save(tmp_path / 'digits.npy', digits)
  predicted = run_main(*common, '--mode=predict', '--member=best',
                       f'--output={tmp_path / "p.json"}',
                       f'--images={tmp_path / "digits.npy"}')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  with open(tmp_path / 'p.json') as f:
    answers = [p['digit'] for p in json.load(f)['predictions']]
  serialized = jax.export.deserialize(bytearray(artifact.read_bytes()))
  probabilities = np.asarray(serialized.call(digits))
  assert probabilities.shape == (len(digits), 10)
  assert list(probabilities.argmax(-1)) == answers


def _test_digits(data_dir):
  """Eight of MNIST's test digits, uint8 [8, 28, 28]."""
  from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  config = config_checks.load_config('tiny')
  config.data_dir = data_dir
  return input_pipeline.load_splits(config).test_images[:8]


def test_pmap_refuses_a_batchnorm_model_without_an_axis_name():
  with pytest.raises(UserError, match='parallelism=pmap: model '
                     'user_models:SmallNnxNet keeps BatchNorm statistics'):
    _create(NNX, axis_name='data')
  # The built-in takes the axis name; a model without BatchNorm needs none.
  _create('improved_lenet', axis_name='data')
  _create('lenet5', axis_name='data')
