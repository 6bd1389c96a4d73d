"""Sweeps (digits_jax/sweep.py), weight averaging and label smoothing.

A sweep's member must be the single run with its values, all members one
compiled program whatever the values; a sweep resumes bit for bit; a bad
spec is one line. The moving average and the smoothed loss are checked
against NumPy.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import (MNIST_DATA, assert_one_line_error, float_drift,
                     latest_checkpoint, run_cli, run_main)

from digits_jax import config_checks
from digits_jax import members as members_lib
from digits_jax import optim
from digits_jax import platform as platform_lib
from digits_jax import recipe
from digits_jax import evaluation
from digits_jax import restore
from digits_jax import steps
from digits_jax import sweep
from digits_jax import train


def _sweep_config(base, spec, mode='grid', **overrides):
  config = base.copy_and_resolve_references()
  config.update_from_flattened_dict(overrides)
  config.sweep, config.sweep_mode = spec, mode
  return members_lib.resolve(config)[0]


def _member_configs(config):
  members = members_lib.resolve(config)[1]
  return [members_lib.member_config(config, members, j)
          for j in range(members.num_models)]


# The spec: parsing, combinations, the members' own configs, bad specs.


def test_a_grid_is_every_combination_the_first_key_slowest(tiny_config):
  config = _sweep_config(tiny_config, 'learning_rate=1e-3,2e-3 seed=4,5,6')
  assert config.num_models == 6
  assert sweep.member_values(config) == [
      {'learning_rate': lr, 'seed': s} for lr in (1e-3, 2e-3)
      for s in (4, 5, 6)]
  members = members_lib.resolve(config)[1]
  assert members.seeds == (4, 5, 6, 4, 5, 6)
  # The seed is no traced value: it chooses the member's keys.
  assert members.traced_keys == ('learning_rate',)
  np.testing.assert_array_equal(members.hparams()['learning_rate'],
                                np.float32([1e-3] * 3 + [2e-3] * 3))
  members = _member_configs(config)
  assert [(m.learning_rate, m.seed, m.num_models, m.sweep) for m in members][
      4] == (2e-3, 5, 1, '')


def test_zip_takes_the_lists_together(tiny_config):
  config = _sweep_config(tiny_config, 'dropout_rate=0.1,0.2 l2=0,1e-3', 'zip')
  assert sweep.member_values(config) == [
      {'dropout_rate': 0.1, 'l2': 0.0}, {'dropout_rate': 0.2, 'l2': 1e-3}]
  assert config.num_models == 2
  assert members_lib.resolve(config)[1].seeds == (0, 0)


def test_configs_sweep_holds_fast_py_and_its_variations():
  config = members_lib.resolve(config_checks.load_config('sweep'))[0]
  fast = config_checks.load_config('fast')
  members = _member_configs(config)
  assert len(members) >= 8
  # Member 0 is configs/fast.py itself.
  assert {k: members[0][k] for k in sweep.SWEEPABLE} == {
      k: fast[k] for k in sweep.SWEEPABLE}
  config_checks.validate(config, config_checks.default_config())


@pytest.mark.parametrize('overrides, fragments', [
    ({'sweep': 'lr=1e-3,2e-3'}, ('lr cannot be swept', 'learning_rate')),
    ({'sweep': 'batch_size=32,64'}, ('batch_size cannot be swept',)),
    ({'sweep': 'learning_rate='}, ('learning_rate= names no values',)),
    ({'sweep': 'learning_rate'}, ('is not KEY=V1,V2',)),
    ({'sweep': 'learning_rate=1e-3,fast'}, ("'fast' is not a number",)),
    ({'sweep': 'seed=0,1.5'}, ("'1.5' is not a non-negative integer",)),
    ({'sweep': 'dropout_rate=0.1,1.5'},
     ('member 1 (dropout_rate=1.5)', 'dropout_rate=1.5', '[0, 1)')),
    ({'sweep': 'learning_rate=-1e-3'}, ('learning_rate=-0.001 must be',)),
    ({'sweep': 'ema_decay=0.9,1'}, ('ema_decay=1.0 must be in [0, 1)',)),
    ({'sweep': 'l2=0,1e-3 l2=1'}, ('names l2 twice',)),
    ({'sweep': 'l2=0,1e-3 seed=0,1,2', 'sweep_mode': 'zip'},
     ('must be of one length', 'l2: 2, seed: 3')),
    ({'sweep': 'l2=0,1e-3', 'sweep_mode': 'random'},
     ("sweep_mode='random' must be one of",)),
    ({'sweep': 'l2=0,1e-3', 'num_models': 3},
     ('num_models=3 with config.sweep', 'sweep seed=0,1')),
    # A floor above the peak: the config's own, and a swept rate's.
    ({'learning_rate': 1e-5, 'min_learning_rate': 1e-4},
     ('min_learning_rate=0.0001', 'at most learning_rate=1e-05')),
    ({'sweep': 'learning_rate=1e-3,1e-5', 'min_learning_rate': 1e-4},
     ('member 1 (learning_rate=1e-05)', 'min_learning_rate=0.0001',
      'at most learning_rate=1e-05')),
])
def test_a_bad_sweep_is_one_line_and_exit_code_2(overrides, fragments):
  args = [f'--config.{k}={v}' for k, v in overrides.items()]
  result = run_main('--config=configs/tiny.py', '--workdir=/nonexistent',
                    *args)
  assert_one_line_error(result, *fragments)


# Label smoothing, the traced one-cycle schedule, the moving average.


def test_label_smoothing_is_cross_entropy_against_smoothed_targets():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 10)).astype(np.float32)
  labels = rng.integers(0, 10, 6)
  targets = np.full((6, 10), 0.1 / 10)
  targets[np.arange(6), labels] += 0.9
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(steps.cross_entropy(logits, labels, 0.1),
                             -(targets * log_probs).sum(-1), rtol=1e-5)
  # Off is the plain loss, the same operations as before it existed.
  np.testing.assert_array_equal(
      steps.cross_entropy(logits, labels),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@pytest.mark.parametrize('total_steps', [4, 100, 2340])
def test_a_traced_peak_gives_optaxs_one_cycle_schedule(total_steps):
  config = config_checks.load_config('fast')
  counts = jnp.arange(total_steps + 3)
  for peak in (4e-3, 1e-3, 7.3e-4):
    want = jax.vmap(optim.learning_rate_schedule(config, total_steps, peak))(
        counts)
    traced = jax.jit(lambda p: jax.vmap(optim.learning_rate_schedule(
        config, total_steps, p))(counts))(jnp.float32(peak))
    # A few float32 ulps: float32 arithmetic where optax's constructor
    # used Python's doubles.
    np.testing.assert_allclose(traced, want, rtol=1e-6, atol=0)


def _steps_of(config, num_steps, batch_size=8):
  """`num_steps` jitted train steps of `config` on MNIST-shaped noise:
  the initial state and the state after each step."""
  platform = platform_lib.current(config.conv_impl)
  members = members_lib.resolve(config)[1]
  model, tx = recipe.build(config, platform, MNIST_DATA, total_steps=num_steps,
                           traced_keys=members.traced_keys)
  preprocess = recipe.preprocessing(
      config, {'pixel_mean': 33.3, 'pixel_std': 78.6})
  init_key, _, train_key = members.keys()
  state = members.create_train_state(model, tx, init_key)
  step = jax.jit(recipe.train_step_fn(config, model, tx, preprocess,
                                      traced_keys=members.traced_keys))
  rng = np.random.default_rng(0)
  states = [state]
  for _ in range(num_steps):
    batch = {'image': rng.integers(0, 256, (batch_size, 28, 28), np.uint8),
             'label': rng.integers(0, 10, batch_size).astype(np.int32)}
    state, _ = step(state, batch, train_key)
    states.append(state)
  return states


@pytest.mark.slow
def test_the_moving_average_follows_its_numpy_derivation(tiny_config):
  """Decay 0.15 against the warmup's cap (1 + n) / (10 + n): capped at the
  first step (0.1), the decay itself after."""
  config = tiny_config.copy_and_resolve_references()
  config.ema_decay, config.input_size = 0.15, 28
  states = _steps_of(config, 3)
  host = lambda tree: jax.tree.map(np.asarray, jax.device_get(tree))
  weights = lambda s: host({'params': s.params, 'batch_stats': s.batch_stats})
  average = weights(states[0])
  for n, state in enumerate(states[1:]):
    decay = min(0.15, (1 + n) / (10 + n))
    average = jax.tree.map(lambda e, x, d=decay: d * e + (1 - d) * x,
                           average, weights(state))
  for got, want in zip(jax.tree.leaves(host(states[-1].ema)),
                       jax.tree.leaves(average)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The average is what inference uses; it differs from the raw weights.
  assert states[-1].inference_variables() is states[-1].ema
  assert not np.allclose(states[-1].ema['params']['fc1']['kernel'],
                         states[-1].params['fc1']['kernel'])
  # Off: no average in the state at all.
  config.ema_decay = 0.0
  assert _steps_of(config, 1)[-1].ema is None


# Sweeps trained: members against single runs, one program, resume.


def _train(config, workdir, platform):
  train.train_and_evaluate(*members_lib.resolve(config), str(workdir), platform)
  return latest_checkpoint(config, str(workdir), platform)


def _all_parameters(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_each_member_is_the_single_run_with_its_values(backend, tiny_config,
                                                       tmp_path):
  """Every sweepable key at once, two members taken together, against two
  single runs on the same platform (the accelerators' vmapped form run on
  the CPU through Platform('gpu')). float32 drift only: the members'
  values are traced float32 where a single run's are constants folded from
  Python's doubles (1 ulp in a learning rate), which Adam magnifies in the
  parameters whose gradients are near zero (helpers.float_drift). The
  other member's single run, the control, is far outside."""
  platform = platform_lib.Platform(backend)
  small = dict(num_train_steps=4, batch_size=25, validation_size=50,
               max_test_examples=100, eval_batch_size=50,
               lr_schedule='onecycle')
  spec = ('learning_rate=1e-3,3e-3 l2=5e-4,0 dropout_rate=0.25,0.1 '
          'rotation_degrees=10,4 zoom_range=0.1,0.02 shift_range=0.1,0.05 '
          'ema_decay=0.9,0.5 label_smoothing=0,0.1 seed=0,3')
  config = _sweep_config(tiny_config, spec, 'zip', **small)
  step, swept = _train(config, tmp_path / 'sweep', platform)
  assert step == 4
  singles = [_train(member, tmp_path / f'single{j}', platform)[1]
             for j, member in enumerate(_member_configs(config))]

  def drift(member, single):
    return float_drift(_all_parameters(member.inference_variables()),
                       _all_parameters(single.inference_variables()))

  for j, single in enumerate(singles):
    member = members_lib.member_of(swept, j)
    assert drift(member, single)['beyond_1e-4'] < 0.01, (j, drift(member,
                                                                  single))
    assert member.ema is not None and single.ema is not None
  assert drift(members_lib.member_of(swept, 0), singles[1])['beyond_1e-4'] > 0.3


@pytest.mark.slow
def test_one_compilation_serves_every_value(tiny_config):
  """The train dispatch of a 3-member sweep, compiled once, runs other
  values for the same keys without compiling again, and they matter."""
  config = _sweep_config(tiny_config, 'learning_rate=1e-3,2e-3,4e-3 '
                         'rotation_degrees=0,5,10', 'zip',
                         model='lenet5', dropout_rate=0.0, input_size=28)
  platform = platform_lib.current()
  devices = train.parallel_lib.create(config, config.num_models)
  members = members_lib.resolve(config)[1]
  built = train.build_program(config, members, devices, platform, MNIST_DATA,
                              total_steps=10)
  program = built.update
  init_key, shuffle_key, train_key = members.keys()
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (200, 28, 28), np.uint8)
  labels = rng.integers(0, 10, 200).astype(np.int32)
  batches = members.epoch_batches(shuffle_key, 0, 200, config.batch_size)[:2]

  def run(hparams):
    state = built.init_state(members, init_key)
    state = devices.place_state(state.replace(hparams=hparams))
    state, _ = program(state, images, labels, batches, train_key)
    return jax.device_get(state.params)

  first = run(built.init_state(members, init_key).hparams)
  other = {'learning_rate': jnp.array([5e-4, 3e-3, 1e-2]),
           'rotation_degrees': jnp.array([15.0, 2.0, 7.0])}
  second = run(other)
  assert program._cache_size() == 1  # pylint: disable=protected-access
  assert not np.allclose(_all_parameters(first), _all_parameters(second))


@pytest.fixture(scope='module')
def sweep_run(tmp_path_factory, tiny_config):
  """A 4-member sweep (learning rate x weight averaging) of the tiny config's
  2 plateau epochs, trained in process: (config, workdir)."""
  config = _sweep_config(tiny_config, 'learning_rate=1e-3,3e-3 '
                         'ema_decay=0,0.9')
  workdir = tmp_path_factory.mktemp('sweep') / 'run'
  train.train_and_evaluate(*members_lib.resolve(config), str(workdir),
                           platform_lib.current())
  return config, str(workdir)


@pytest.fixture(scope='module')
def tiny_config(mnist_data_dir):  # pylint: disable=redefined-outer-name
  """conftest's, for the module-scoped fixture here."""
  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  return config


@pytest.mark.slow
def test_a_sweep_resumes_bit_for_bit(sweep_run, tmp_path):
  config, workdir = sweep_run
  platform = platform_lib.current()
  resumed = tmp_path / 'resumed'
  first = config.copy_and_resolve_references()
  first.num_epochs = 1
  train.train_and_evaluate(*members_lib.resolve(first), str(resumed), platform)
  train.train_and_evaluate(*members_lib.resolve(config), str(resumed), platform)
  (step, want), (resumed_step, got) = (
      latest_checkpoint(config, workdir, platform),
      latest_checkpoint(config, str(resumed), platform))
  assert step == resumed_step
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert got.hparams is not None and got.ema is not None


@pytest.mark.slow
def test_the_sweep_writes_its_table_and_picture(sweep_run):
  config, workdir = sweep_run
  written = json.loads(open(os.path.join(workdir, sweep.SWEEP_JSON)).read())
  members = written['members']
  assert sorted(m['member'] for m in members) == [0, 1, 2, 3]
  assert [m['val_accuracy'] for m in members] == sorted(
      (m['val_accuracy'] for m in members), reverse=True)
  # Each member's best epoch, read back from the run's own records.
  records = [json.loads(l) for l in open(os.path.join(workdir,
                                                      'metrics.jsonl'))]
  for m in members:
    history = [r['member_val_accuracy'][m['member']] for r in records]
    assert m['val_accuracy'] == max(history)
    assert history[m['epoch'] - 1] == m['val_accuracy']
    assert m['values'] == sweep.member_values(config)[m['member']]
  with open(os.path.join(workdir, sweep.SWEEP_PNG), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  report = json.loads(open(os.path.join(workdir, 'eval_test.json')).read())
  for entry, values in zip(report['members'], sweep.member_values(config)):
    assert entry['values'] == values
    assert 0 < entry['val_accuracy'] <= 1 and 0 < entry['accuracy'] <= 1
  # The ensemble chosen on validation: its best k members by validation.
  chosen = report['chosen_by_validation']
  by_validation = sorted(report['members'],
                         key=lambda m: (-m['val_accuracy'], m['val_loss']))
  assert chosen['members'] == [m['member'] for m in by_validation][
      :len(chosen['members'])]
  assert chosen['val_accuracy'] == max(chosen['val_accuracy_by_k'])


@pytest.mark.slow
def test_predict_and_export_take_the_best_member_or_a_named_one(sweep_run,
                                                                tmp_path):
  config, workdir = sweep_run
  from digits_jax import checkpoint  # pylint: disable=g-import-not-at-top
  platform = platform_lib.current()
  everyone = restore.restore_best(*members_lib.resolve(config), workdir,
                                  platform)
  metrics = checkpoint.read_metrics(
      os.path.join(workdir, 'checkpoints'), everyone.step)
  # The ranking's own rule (members tied on accuracy: the lower loss), not
  # argmax, which takes the first of a tie.
  best = members_lib.rank_by_validation(metrics['member_val_accuracy'],
                                        metrics['member_val_loss'])[0]
  digits = np.random.default_rng(1).integers(0, 256, (3, 28, 28), np.uint8)
  all_logits = evaluation.restored_logits(everyone, config, digits)
  chosen = restore.restore_best(*members_lib.resolve(config), workdir, platform,
                                'best')
  assert not chosen.members.stacked
  np.testing.assert_allclose(
      evaluation.restored_logits(chosen, config, digits)[0],
      all_logits[best], rtol=1e-5, atol=1e-5)
  named = restore.restore_best(*members_lib.resolve(config), workdir, platform,
                               '2')
  np.testing.assert_allclose(
      evaluation.restored_logits(named, config, digits)[0],
      all_logits[2], rtol=1e-5, atol=1e-5)
  result = run_main('--config=configs/tiny.py',
                    f'--config.data_dir={config.data_dir}',
                    f'--config.sweep={config.sweep}', f'--workdir={workdir}',
                    '--mode=export', f'--output={tmp_path / "m.jax"}',
                    '--member=9')
  assert_one_line_error(result, "--member='9'", '0 to 3')
