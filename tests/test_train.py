import functools
import hashlib
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import (MNIST_DATA, assert_one_line_error, latest_checkpoint,
                     plateau_state, run_main)

from digits_jax import checkpoint
from digits_jax import config_checks
from digits_jax import evaluation
from digits_jax import members as members_lib
from digits_jax import models
from digits_jax import platform as platform_lib
from digits_jax import recipe
from digits_jax import steps
from digits_jax import train
from digits_jax.errors import UserError

# What these tests build and evaluate for: this process's platform.
PLATFORM = platform_lib.current()


def _setup(input_size=28):
  config = config_checks.load_config('improved')
  config.input_size = input_size
  model, tx = recipe.build(config, PLATFORM, MNIST_DATA)
  preprocess = recipe.preprocessing(
      config, {'pixel_mean': 33.0, 'pixel_std': 78.0})
  state = steps.create_train_state(model, tx, jax.random.key(0))
  step_fn = recipe.train_step_fn(config, model, tx, preprocess)
  return state, step_fn


def _assert_trees_close(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


@pytest.mark.parametrize('unroll', [False, True])
def test_scanned_steps_equal_single_steps(unroll):
  state, step_fn = _setup()
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (64, 28, 28), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, 64, dtype=np.int32))
  batches = steps.epoch_batches(jax.random.key(1), 0, 64, 16)[:3]  # K = 3.
  key = jax.random.key(2)

  scanned, metrics = jax.jit(functools.partial(
      steps.scan_train_steps, step_fn, unroll=unroll))(
          state, images, labels, batches, key)

  single = state
  jitted_step = jax.jit(step_fn)
  losses = []
  for indices in batches:
    single, m = jitted_step(
        single, {'image': images[indices], 'label': labels[indices]}, key)
    losses.append(m['loss'])
  assert int(scanned.step) == int(single.step) == 3
  np.testing.assert_allclose(metrics['loss'], losses, rtol=1e-5)
  # Float32 tolerance: XLA compiles the two programs differently (the
  # gradients agree to ~1e-6 of their scale), and Adam's first steps
  # (update ~ lr * m / sqrt(v)) turn such differences on near-zero or
  # sign-changing gradients into a sizeable part of lr = 1e-3. So: all but
  # 0.1% of the model's parameters within 5e-5 (counted over the whole
  # model: jax 0.11.2's rolled loop puts 2 of a 64-entry bias just beyond),
  # and every one within a third of the 3 steps' 3e-3 of travel. A wrong
  # batch, key or step count moves most parameters by about lr.
  pairs = [(np.asarray(x), np.asarray(y)) for x, y in zip(
      jax.tree.leaves(scanned.params), jax.tree.leaves(single.params))]
  beyond = sum(int((np.abs(x - y) > 5e-5 + 1e-4 * np.abs(y)).sum())
               for x, y in pairs)
  assert beyond <= 1e-3 * sum(y.size for _, y in pairs), beyond
  assert max(np.abs(x - y).max() for x, y in pairs) <= 1e-3
  _assert_trees_close(scanned.batch_stats, single.batch_stats, rtol=1e-4,
                      atol=1e-5)


def test_epoch_batches_are_a_seeded_permutation():
  a = np.asarray(steps.epoch_batches(jax.random.key(0), 3, 103, 10))
  assert a.shape == (10, 10) and len(set(a.ravel())) == 100
  b = np.asarray(steps.epoch_batches(jax.random.key(0), 3, 103, 10))
  c = np.asarray(steps.epoch_batches(jax.random.key(0), 4, 103, 10))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_a_bag_is_a_seeded_subset_that_every_epoch_goes_over_once():
  key = jax.random.key(0)
  bag = np.asarray(steps.bag(key, 103, 60))
  assert len(set(bag)) == 60 and bag.min() >= 0 and bag.max() < 103
  np.testing.assert_array_equal(bag, np.sort(bag))
  epochs = [np.asarray(steps.epoch_batches(key, epoch, 103, 10, bag_size=60))
            for epoch in (0, 1)]
  for batches in epochs:
    assert batches.shape == (6, 10)
    # The whole bag, once, in an order of the epoch's own.
    np.testing.assert_array_equal(np.sort(batches.ravel()), bag)
  assert not np.array_equal(epochs[0], epochs[1])
  # Another key draws another bag.
  other = np.asarray(steps.bag(jax.random.key(1), 103, 60))
  assert len(set(bag) & set(other)) < 60
  # A bag of everything is no bag: the epochs are what they were.
  np.testing.assert_array_equal(
      steps.epoch_batches(key, 3, 103, 10, bag_size=103),
      steps.epoch_batches(key, 3, 103, 10))


def test_classification_report():
  logits = np.log(np.array([[0.7, 0.2, 0.1] + [1e-9] * 7,
                            [0.1, 0.8, 0.1] + [1e-9] * 7,
                            [0.6, 0.3, 0.1] + [1e-9] * 7]))
  report = evaluation.classification_report(logits, np.array([0, 1, 1]))
  assert report['accuracy'] == pytest.approx(2 / 3)
  assert report['loss'] == pytest.approx(
      -(np.log(0.7) + np.log(0.8) + np.log(0.3)) / 3, rel=1e-6)
  assert report['confusion_matrix'][1][0] == 1
  assert report['per_class_accuracy'][:2] == [1.0, 0.5]


@pytest.mark.slow
def test_training_writes_metrics_checkpoints_and_the_test_report(trained_run):
  config, workdir, report = trained_run
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    saved = json.load(f)
  assert saved['num_examples'] == config.max_test_examples
  assert np.sum(saved['confusion_matrix']) == config.max_test_examples
  assert len(saved['per_class_accuracy']) == 10
  assert saved['accuracy'] == report['accuracy']
  # 2 epochs on 1,000 real digits already learn something (chance: 0.1).
  assert report['accuracy'] > 0.5
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  assert [m['epoch'] for m in lines] == [1, 2]
  assert lines[1]['train_loss'] < lines[0]['train_loss']
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


@pytest.mark.slow
def test_the_loop_hands_each_epochs_validation_figures_on(trained_run):
  """The figures the loop hands on, against metrics.jsonl: each
  checkpoint's metrics (which choose the best) are its epoch's validation
  accuracy and loss, the best is the highest accuracy, and the plateau
  followed the validation losses (the article's rule, re-derived here)."""
  config, workdir, _ = trained_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    epochs = [json.loads(line) for line in f]
  manager = checkpoint.create_manager(os.path.join(workdir, 'checkpoints'),
                                      config.checkpoints_to_keep,
                                      read_only=True)
  assert sorted(manager.all_steps()) == [e['step'] for e in epochs]
  for epoch in epochs:
    assert manager.metrics(epoch['step']) == {
        'val_accuracy': epoch['val_accuracy'], 'val_loss': epoch['val_loss']}
    # Teeth: the train figures are not the validation ones.
    assert epoch['train_loss'] != epoch['val_loss']
  assert manager.best_step() == max(
      epochs, key=lambda e: (e['val_accuracy'], -e['step']))['step']

  best, bad = np.inf, 0
  for epoch in epochs:
    if epoch['val_loss'] < best - config.plateau_min_delta:
      best, bad = epoch['val_loss'], 0
    else:
      bad += 1
  _, state = latest_checkpoint(config, workdir)
  plateau = plateau_state(state.opt_state)
  np.testing.assert_allclose(plateau.best_loss, best, rtol=1e-6)
  assert int(plateau.num_bad_epochs) == bad


@pytest.mark.slow
def test_eval_writes_the_three_report_pictures_from_the_runs_metrics(
    trained_run):
  from digits_jax import reports
  config, workdir, _ = trained_run
  for name in (reports.CONFUSION, reports.MISCLASSIFIED, reports.CURVES):
    path = os.path.join(workdir, name)
    assert os.path.getsize(path) > 1000, name
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # The curves come from the run's own metrics: one point per epoch run.
  assert len(reports.read_metrics(workdir)) == config.num_epochs


@pytest.mark.slow
def test_checkpoint_round_trip_reproduces_the_eval_figures(trained_run):
  config, workdir, report = trained_run
  again = evaluation.evaluate_checkpoint(*members_lib.resolve(config), workdir,
                                         PLATFORM)
  for key in ('accuracy', 'loss', 'confusion_matrix', 'checkpoint_step'):
    assert again[key] == report[key]


@pytest.mark.slow
def test_resume_continues_to_the_same_parameters(trained_run, tmp_path):
  config, workdir, _ = trained_run
  # One epoch, then a second run of the same command with 2 epochs resumes
  # at step 20 and must end where the uninterrupted 2-epoch run ended.
  config = config.copy_and_resolve_references()
  resumed_dir = str(tmp_path)
  config.num_epochs = 1
  train.train_and_evaluate(*members_lib.resolve(config), resumed_dir, PLATFORM)
  config.num_epochs = 2
  train.train_and_evaluate(*members_lib.resolve(config), resumed_dir, PLATFORM)

  def final_state(directory):
    manager = checkpoint.create_manager(
        os.path.join(directory, 'checkpoints'), 2, read_only=True)
    return manager.latest_step(), checkpoint.restore_state(
        manager, manager.latest_step(), _target(config))

  step_a, state_a = final_state(workdir)
  step_b, state_b = final_state(resumed_dir)
  assert step_a == step_b == 40
  _assert_trees_close(state_a, state_b, rtol=0, atol=0)


def _target(config):
  model, tx = recipe.build(config, PLATFORM, MNIST_DATA)
  return steps.create_train_state(model, tx, jax.random.key(0))


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused(trained_run):
  config, workdir, _ = trained_run
  config = config.copy_and_resolve_references()
  config.model, config.dropout_rate = 'lenet5', 0.0
  before = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  with pytest.raises(UserError, match="model='improved_lenet'"):
    train.train_and_evaluate(*members_lib.resolve(config), workdir, PLATFORM)
  with pytest.raises(UserError, match='model'):
    evaluation.evaluate_checkpoint(*members_lib.resolve(config), workdir,
                                   PLATFORM)
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == before


def _one_batch_setup(**overrides):
  """The improved model at 28x28 (with `overrides`), its state, its jitted
  step and a random batch of 16."""
  config = config_checks.load_config('improved')
  config.input_size = 28
  config.update(overrides)
  model, tx = recipe.build(config, PLATFORM, MNIST_DATA)
  preprocess = recipe.preprocessing(
      config, {'pixel_mean': 33.0, 'pixel_std': 78.0})
  state = steps.create_train_state(model, tx, jax.random.key(0))
  step_fn = jax.jit(recipe.train_step_fn(config, model, tx, preprocess))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (16, 28, 28),
                                             dtype=np.uint8)),
           'label': jnp.asarray(rng.integers(0, 10, 16, dtype=np.int32))}
  return model, preprocess, state, step_fn, batch


def test_bfloat16_compute_keeps_state_in_float32():
  _, _, state, step_fn, batch = _one_batch_setup(compute_dtype='bfloat16')
  new_state, metrics = step_fn(state, batch, jax.random.key(1))
  assert np.isfinite(float(metrics['loss']))
  for tree in (new_state.params, new_state.batch_stats, new_state.opt_state):
    for leaf in jax.tree.leaves(tree):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32
  # The parameters moved.
  assert not np.allclose(new_state.params['conv1']['kernel'],
                         state.params['conv1']['kernel'])


@pytest.mark.slow
def test_a_partial_checkpoint_is_ignored_and_cleaned_up(trained_run,
                                                        tmp_path):
  """What a crash (kill -9) during a checkpoint write leaves behind: orbax's
  temporary directory for the step being written."""
  config, workdir, report = trained_run
  workdir_copy = str(tmp_path / 'run')
  shutil.copytree(workdir, workdir_copy)
  partial = os.path.join(workdir_copy, 'checkpoints',
                         '60.orbax-checkpoint-tmp')
  os.makedirs(os.path.join(partial, 'state'))
  with open(os.path.join(partial, 'state', 'half_written'), 'wb') as f:
    f.write(b'\0' * 100)

  again = evaluation.evaluate_checkpoint(*members_lib.resolve(config),
                                         workdir_copy, PLATFORM)
  assert again['accuracy'] == report['accuracy']

  config = config.copy_and_resolve_references()
  config.num_epochs = 3
  train.train_and_evaluate(*members_lib.resolve(config), workdir_copy, PLATFORM)
  checkpoints = os.listdir(os.path.join(workdir_copy, 'checkpoints'))
  assert not [c for c in checkpoints if 'tmp' in c], checkpoints
  assert '60' in checkpoints  # Resumed from step 40 and wrote epoch 3.


def test_each_step_draws_its_randomness_from_fold_in_of_the_step():
  """A step at state.step = s augments with, and drops out with, the two
  halves of fold_in(key, s): re-derived here by hand from the model."""
  model, preprocess, state, step_fn, batch = _one_batch_setup()
  key = jax.random.key(7)

  @jax.jit
  def reference(step):
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(key, step))
    logits, batch_stats = model.apply_train(
        state.params, state.batch_stats,
        preprocess(batch['image'], augment_key), dropout_key)
    loss = steps.cross_entropy(logits, batch['label']).mean()
    return loss, batch_stats

  losses = []
  for step in (0, 5, 6):
    new_state, metrics = step_fn(state.replace(step=jnp.int32(step)), batch,
                                 key)
    loss, batch_stats = reference(step)
    np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-5)
    # The step keeps the batch statistics that its forward pass updated.
    _assert_trees_close(new_state.batch_stats, batch_stats, rtol=1e-5,
                        atol=1e-6)
    assert int(new_state.step) == step + 1
    losses.append(float(metrics['loss']))
  assert len(set(losses)) == 3  # Each step its own draws.


def test_evaluator_returns_the_logits_of_each_image_in_order():
  """Padding to the eval batch size must not shift or mix images: 7 images
  in batches of 4 against the model applied to them directly."""
  model = models.create('improved_lenet', input_shape=(28, 28, 1),
                        num_classes=10, dtype=jnp.float32)
  preprocess = steps.Preprocess(input_size=28, pixel_mean=33.0,
                                pixel_std=78.0)
  state = steps.create_train_state(model, optax.identity(), jax.random.key(0))
  # Non-trivial BatchNorm statistics, so that they must be used.
  rng = np.random.default_rng(1)
  state = state.replace(batch_stats={
      layer: {'mean': stats['mean'] + 0.01 * rng.normal(
                  size=stats['mean'].shape).astype(np.float32),
              'var': stats['var'] * rng.uniform(
                  0.5, 2.0, stats['var'].shape).astype(np.float32)}
      for layer, stats in state.batch_stats.items()})
  images = np.random.default_rng(0).integers(0, 256, (7, 28, 28),
                                             dtype=np.uint8)
  got = evaluation.Evaluator(model, preprocess, 4, PLATFORM).logits(state,
                                                                    images)
  standardized = ((images.astype(np.float32) - 33.0) / 78.0)[..., None]
  want = model.apply_eval({'params': state.params,
                           'batch_stats': state.batch_stats}, standardized)
  assert got.shape == (7, 10)
  assert np.ptp(np.asarray(want), axis=0).min() > 0.01  # Images differ.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _snapshot(directory):
  """Every file under `directory` with its bytes' digest."""
  files = {}
  for folder, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = hashlib.sha256(
            f.read()).hexdigest()
  return files


@pytest.mark.slow
@pytest.mark.parametrize('overrides, named', [
    (['--config.batch_size=25'], 'batch_size=50 -> 25'),
    (['--config.learning_rate=0.002'], 'learning_rate=0.001 -> 0.002'),
    (['--config.rotation_degrees=15.0'], 'rotation_degrees=10.0 -> 15.0'),
    (['--config.seed=1', '--config.l2=0.0'], 'l2=0.0005 -> 0.0, seed=0 -> 1'),
])
def test_a_resume_with_another_recipe_is_refused_and_writes_nothing(
    trained_run, tmp_path, overrides, named):
  config, workdir, _ = trained_run
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  before = _snapshot(run)
  result = run_main('--config=configs/tiny.py', f'--workdir={run}',
                    f'--config.data_dir={config.data_dir}',
                    '--config.num_epochs=3', *overrides)
  assert_one_line_error(result, 'another recipe', named, 'fresh --workdir')
  assert _snapshot(run) == before


def test_what_a_resume_may_change_and_what_it_may_not():
  recorded = config_checks.load_config('tiny')
  meta = {'config': json.loads(recorded.to_json())}
  config = recorded.copy_and_resolve_references()
  # Where the data and run live, how the work is spread, what is evaluated,
  # and, with the plateau, how long it trains: accepted.
  config.data_dir = '/elsewhere'
  config.eval_batch_size = 100
  config.steps_per_dispatch = 2
  config.parallelism = 'pmap'
  config.num_epochs = 10
  checkpoint.check_same_recipe(meta, config, 'run')
  # A one-cycle schedule's length follows num_epochs: refused.
  recorded.lr_schedule = config.lr_schedule = 'onecycle'
  meta = {'config': json.loads(recorded.to_json())}
  with pytest.raises(UserError, match='num_epochs=2 -> 10'):
    checkpoint.check_same_recipe(meta, config, 'run')
  # A key the checkpoint's config does not record (added since) is not
  # compared.
  del meta['config']['dropout_rate']
  config.num_epochs, config.dropout_rate = recorded.num_epochs, 0.5
  checkpoint.check_same_recipe(meta, config, 'run')


# A run that learns nothing: the loss far above a uniform guess's, finite.


def test_a_loss_far_above_a_guess_stops_a_run_and_names_the_rate():
  single = members_lib.Members(seeds=(0,))
  healthy = np.array([2.4, 2.1, 1.7, 0.9])  # A first dispatch, learning.
  train.check_diverged(healthy, 0, single, set(), lambda: [], 10)
  huge = np.array([2.3, 8e3, 5e7, 5e11])
  with pytest.raises(train.TrainingDiverged) as raised:
    train.check_diverged(huge, 40, single, set(), lambda: [20], 10)
  message = str(raised.value)
  assert 'averaged 1.25e+11 over steps 40-43' in message
  assert 'the last checkpoint is step 20' in message
  assert 'config.learning_rate' in message
  # Just above and just below ten times ln 10 = 23.03.
  with pytest.raises(train.TrainingDiverged):
    train.check_diverged(np.full(4, 23.1), 0, single, set(), lambda: [], 10)
  train.check_diverged(np.full(4, 22.9), 0, single, set(), lambda: [], 10)
  ensemble = members_lib.Members(seeds=(0, 1))  # One recipe: any member.
  with pytest.raises(train.TrainingDiverged):
    train.check_diverged(np.array([[2.0, 1e6]] * 3), 0, ensemble, set(),
                         lambda: [], 10)


def test_a_sweep_trains_on_while_some_members_learn(caplog):
  sweep = members_lib.Members(
      seeds=(0, 0, 0), values=({'learning_rate': 1e-3},
                               {'learning_rate': 1e4}, {'learning_rate': 1e5}))
  diverged = set()
  train.check_diverged(np.array([[1.0, 1e9, 2.0]] * 2), 8, sweep, diverged,
                       lambda: [], 10)
  assert diverged == {1}
  assert 'Member 1 (learning_rate=10000) diverged' in caplog.text
  caplog.clear()
  train.check_diverged(np.array([[1.0, 1e9, 2.0]] * 2), 10, sweep, diverged,
                       lambda: [], 10)
  assert not caplog.text  # Named once.
  with pytest.raises(train.TrainingDiverged):  # Every member now.
    train.check_diverged(np.array([[30.0, 1e9, 1e9]] * 2), 12, sweep,
                         diverged, lambda: [], 10)


def test_a_non_finite_loss_names_its_step():
  with pytest.raises(train.TrainingDiverged, match='non-finite at step 6'):
    train.check_diverged(np.array([1.0, 1.0, np.nan, 1.0]), 4,
                         members_lib.Members(seeds=(0,)), set(), lambda: [], 10)
