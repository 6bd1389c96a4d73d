"""Ensembles: K members trained in one compiled step (digits_jax/members.py).

Member i must be the single run with seed + i, whichever form the step takes
over the members and however many devices it runs on; each member's plateau
follows its own validation loss; the ensemble is judged, checkpointed,
evaluated and predicted as the mean of its members' probabilities.
"""

import json
import os

import jax
import numpy as np
import pytest

from helpers import (float_drift, latest_checkpoint, launch_two_hosts,
                     plateau_state, run_cli, run_main)

from digits_jax import checkpoint
from digits_jax import config_checks
from digits_jax import evaluation
from digits_jax import members as members_lib
from digits_jax import optim
from digits_jax import platform as platform_lib
from digits_jax import restore
from digits_jax import steps
from digits_jax import train


def _train(config, workdir, platform=None, **overrides):
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(overrides)
  platform = platform or platform_lib.current(config.conv_impl)
  train.train_and_evaluate(*members_lib.resolve(config), workdir, platform)
  return latest_checkpoint(config, str(workdir), platform)


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['cpu', 'gpu'])
def test_members_trained_together_equal_single_runs_with_their_seeds(
    backend, tiny_config, tmp_path):
  """The CPU's form (members side by side) and the accelerators' (vmap, run
  here on the CPU through Platform('gpu')) against two single runs on the
  same platform, to float32 drift (helpers.float_drift; vmap's grouped
  convolutions sum in another order, and XLA's default CPU convolutions,
  which the accelerator path takes here, round differently by CPU: after 4
  steps, measured up to 7e-3 relative on Adam's moments on an AMD EPYC and
  7e-2 on an Intel Xeon with AVX-512; 0.2% of a leaf's parameters beyond
  1e-4). Another seed's run, the control, is far outside."""
  platform = platform_lib.Platform(backend)
  # Batches of 25 and small evaluation sets: XLA:CPU runs the vmapped
  # grouped convolutions slowly, and the comparison needs only the steps.
  # (At batches of 10, Adam magnified more near-zero gradients: 23% of a
  # leaf's parameters beyond 1e-4.)
  small = dict(num_train_steps=4, batch_size=25, validation_size=50,
               max_test_examples=100, eval_batch_size=50)
  single_runs = [_train(tiny_config, tmp_path / f'seed{seed}', platform,
                        seed=seed, **small)[1] for seed in (0, 1)]
  step, ensemble_state = _train(tiny_config, tmp_path / 'ensemble', platform,
                                num_models=2, **small)
  assert step == 4
  np.testing.assert_array_equal(ensemble_state.step, [4, 4])

  def drift(member, single):
    return (float_drift(member.params, single.params),
            float_drift((member.batch_stats, member.opt_state),
                        (single.batch_stats, single.opt_state)))

  for i, single in enumerate(single_runs):
    params, statistics = drift(members_lib.member_of(ensemble_state, i), single)
    assert params['beyond_1e-4'] < 0.03, (i, params)
    assert statistics['relative'] < 0.15, (i, statistics)
  # The tolerance has teeth: a member against the other seed's run.
  params, statistics = drift(members_lib.member_of(ensemble_state, 0),
                             single_runs[1])
  assert params['beyond_1e-4'] > 0.5 and statistics['relative'] > 0.5, (
      params, statistics)


def test_each_members_plateau_follows_its_own_validation_loss():
  members = members_lib.Members(seeds=(0, 1))
  state = members_lib.stack([optim.scale_by_plateau().init(None)] * 2)
  config = config_checks.load_config('improved')  # factor 0.2, patience 2.
  # Member 0 keeps improving; member 1 stalls after its first epoch.
  for losses in ([1.0, 1.0], [0.9, 1.0], [0.8, 1.0]):
    state = members.report_epoch(state, losses, config)
  np.testing.assert_allclose(state.scale, [1.0, 0.2])
  np.testing.assert_allclose(state.best_loss, [0.8, 1.0])


def test_each_members_plateau_floor_is_its_own_swept_rates():
  """Under the plateau, a sweep's member with its own learning rate is cut
  down to config.min_learning_rate, not to the floor of the config's rate
  (or of another member's): its scale stops at min_learning_rate / its
  rate, and the rate it logs is min_learning_rate."""
  config = config_checks.load_config('improved')  # factor 0.2, patience 2.
  config.min_learning_rate = 1e-5
  rates = (1e-3, 4e-3, 2e-2)
  members = members_lib.Members(
      seeds=(0, 0, 0), values=tuple({'learning_rate': r} for r in rates),
      traced_keys=('learning_rate',))
  state = members_lib.stack([optim.scale_by_plateau().init(None)] * 3)
  for _ in range(20):  # Enough cuts of 0.2 to reach every floor.
    state = members.report_epoch(state, [1.0, 1.0, 1.0], config)
  np.testing.assert_allclose(state.scale, [1e-5 / r for r in rates],
                             rtol=1e-6)
  np.testing.assert_allclose(
      members.current_learning_rates(jax.device_get(state), 40, config, 0),
      [1e-5] * 3, rtol=1e-6)


def _one_hot_logits(predictions, scale=4.0):
  return scale * np.eye(10)[np.asarray(predictions)]


def test_the_chosen_ensemble_is_chosen_on_validation_alone():
  """eval's ensemble of a sweep's best members: which members and how many
  come from validation alone. The same validation with three test sets,
  one of which favours other members, gives the same choice, and it is the
  one validation makes (rank by accuracy then loss, the k whose ensemble is
  best on validation, the fewer among equals)."""
  val_labels = np.arange(20) % 10
  right = lambda n: np.where(np.arange(20) < n, val_labels,
                             (val_labels + 1 + np.arange(20) % 3) % 10)
  # Validation: member 2 best (18 of 20), then 0 (16), then 1 (12).
  val_logits = np.stack([_one_hot_logits(right(16)),
                         _one_hot_logits(right(12)),
                         _one_hot_logits(right(18))])
  members = members_lib.Members(
      seeds=(0, 1, 2), values=({'seed': 0}, {'seed': 1}, {'seed': 2}))
  test_labels = np.arange(30) % 10
  other = lambda n: np.where(np.arange(30) < n, test_labels,
                             (test_labels + 3) % 10)
  test_sets = [np.stack([_one_hot_logits(other(n)) for n in counts])
               for counts in ((25, 20, 28), (30, 30, 0), (0, 30, 5))]
  chosen = []
  for test_logits in test_sets:
    report = evaluation.ensemble_report(test_logits, test_labels)
    evaluation.add_member_validation(report, members, val_logits, val_labels,
                                     test_logits, test_labels)
    chosen.append(report['chosen_by_validation'])
    picked = report['chosen_by_validation']['members']
    assert report['chosen_by_validation']['accuracy'] == pytest.approx(
        members_lib.accuracy(test_logits[picked], test_labels))
  assert all(c['members'] == chosen[0]['members'] for c in chosen)
  assert all(c['val_accuracy'] == chosen[0]['val_accuracy'] for c in chosen)
  # What validation alone chooses, computed here from first principles.
  val_accuracy = [(l.argmax(-1) == val_labels).mean() for l in val_logits]
  order = sorted(range(3), key=lambda j: -val_accuracy[j])
  assert order == [2, 0, 1]
  by_k = [members_lib.accuracy(val_logits[order[:k]], val_labels)
          for k in (1, 2, 3)]
  best_k = 1 + int(np.argmax(by_k))
  assert chosen[0]['members'] == order[:best_k]
  assert chosen[0]['val_accuracy_by_k'] == by_k


def test_members_tied_on_validation_accuracy_rank_by_the_lower_loss():
  """The one ranking (the epoch's best member, --member=best, the sweep's
  table, eval's chosen ensemble): accuracy, then the lower loss, then the
  lower number. Ties are common on a small validation split."""
  accuracies, losses = [0.765, 0.70, 0.765, 0.765], [1.688, 0.5, 0.727, 0.727]
  assert members_lib.rank_by_validation(accuracies, losses) == [2, 3, 0, 1]
  metrics = {'member_val_accuracy': accuracies, 'member_val_loss': losses}
  assert restore._member_index('best', 4, metrics) == 2  # pylint: disable=protected-access
  # eval's chosen ensemble starts from the same member: two members right
  # on the same 8 of 10, member 1 less sure of its 2 mistakes (lower loss).
  val_labels = np.arange(10)
  predictions = np.where(val_labels < 8, val_labels, (val_labels + 1) % 10)
  sure = _one_hot_logits(predictions)
  less_sure_when_wrong = sure.copy()
  less_sure_when_wrong[8:] /= 4
  logits = np.stack([sure, less_sure_when_wrong])
  chosen = members_lib.choose_by_validation(logits, val_labels)
  assert chosen['members'][0] == 1


@pytest.mark.slow
def test_each_member_trains_on_the_bag_its_single_run_trains_on(
    tiny_config, tmp_path):
  members = members_lib.Members(seeds=(5, 6, 7))
  _, shuffle_keys, _ = members.keys()
  batches = np.asarray(members.epoch_batches(shuffle_keys, 2, 200, 10,
                                             bag_size=100))
  assert batches.shape == (10, 3, 10)
  bags = []
  for i in range(3):
    _, single_key, _ = members_lib.Members(seeds=(5 + i,)).keys()
    np.testing.assert_array_equal(
        batches[:, i], steps.epoch_batches(single_key, 2, 200, 10,
                                           bag_size=100))
    bags.append(set(batches[:, i].ravel()))
  # Each member its own part of the data (two random halves of 200 share
  # about 50 images).
  assert all(len(a & b) < 80 for a in bags for b in bags if a is not b)

  # And the loop takes an epoch to be one pass over each member's bag:
  # tiny's 1,000 training images, half of them, in batches of 50. (Three
  # members, as the session's ensemble_run: the same compiled programs.)
  step, _ = _train(tiny_config, tmp_path / 'bagged', num_epochs=1,
                   num_models=3, bag_fraction=0.5)
  assert step == 10


@pytest.mark.slow
def test_the_loop_reports_each_members_validation_loss_to_its_plateau(
    ensemble_run):
  workdir, _, _ = ensemble_run
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    epoch = json.loads(f.readline())
  config = config_checks.load_config('tiny')
  config.num_models = 3
  _, state = latest_checkpoint(config, workdir)
  plateau = plateau_state(state.opt_state)
  # After one epoch each member's best loss is its own validation loss.
  np.testing.assert_allclose(plateau.best_loss, epoch['member_val_loss'],
                             rtol=1e-6)
  assert len(set(epoch['member_val_loss'])) == 3
  assert len(epoch['member_val_accuracy']) == 3
  # The best checkpoint is chosen on the ensemble's figures, which are none
  # of its members'.
  manager = checkpoint.create_manager(os.path.join(workdir, 'checkpoints'),
                                      2, read_only=True)
  # Each member's too, whence --member=best.
  assert manager.metrics(epoch['step']) == {
      'val_accuracy': epoch['val_accuracy'], 'val_loss': epoch['val_loss'],
      'member_val_accuracy': epoch['member_val_accuracy'],
      'member_val_loss': epoch['member_val_loss']}
  assert epoch['val_loss'] not in epoch['member_val_loss']


@pytest.mark.slow
def test_eval_reports_each_member_and_the_mean_of_their_probabilities(
    ensemble_run, mnist_data_dir):
  workdir, _, result = ensemble_run
  assert 'improved_lenet x3' in result.stderr
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    report = json.load(f)
  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  config.num_models = 3
  restored = restore.restore_best(*members_lib.resolve(config), workdir,
                                  platform_lib.current())
  from digits_jax import input_pipeline
  splits = input_pipeline.load_splits(config)
  # Reference: each member's model applied alone, then NumPy.
  probabilities = []
  for i in range(3):
    variables = members_lib.member_of({'params': restored.state.params,
                                    'batch_stats': restored.state.batch_stats},
                                   i)
    logits = np.asarray(restored.model.apply_eval(
        variables, restored.preprocess(splits.test_images)), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities.append(p / p.sum(-1, keepdims=True))
  labels = splits.test_labels
  member_accuracy = [float((p.argmax(-1) == labels).mean())
                     for p in probabilities]
  mean = np.mean(probabilities, axis=0)
  assert report['num_models'] == 3
  assert [m['accuracy'] for m in report['members']] == pytest.approx(
      member_accuracy, abs=1e-9)
  assert report['member_accuracy_mean'] == pytest.approx(
      np.mean(member_accuracy))
  assert report['member_accuracy_std'] == pytest.approx(
      np.std(member_accuracy, ddof=1))
  assert report['accuracy'] == pytest.approx(
      float((mean.argmax(-1) == labels).mean()), abs=1e-9)
  assert report['loss'] == pytest.approx(
      float(-np.log(mean[np.arange(len(labels)), labels]).mean()), rel=1e-4)
  for name in ('confusion_matrix.png', 'misclassified.png',
               'training_curves.png'):
    assert os.path.exists(os.path.join(workdir, name))


@pytest.mark.slow
def test_predict_uses_the_ensemble_and_says_how_many_members_agree(
    ensemble_run, tmp_path, mnist_data_dir):
  workdir, common, _ = ensemble_run
  from digits_jax import input_pipeline
  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  digits = input_pipeline.load_splits(config).test_images[:5]
  np.save(tmp_path / 'digits.npy', digits)
  output = tmp_path / 'predictions.json'
  result = run_cli(*common, '--mode=predict',
                   f'--images={tmp_path / "digits.npy"}', f'--output={output}')
  assert result.returncode == 0, result.stderr[-3000:]
  predictions = json.loads(output.read_text())['predictions']
  config.num_models = 3
  restored = restore.restore_best(*members_lib.resolve(config), workdir,
                                  platform_lib.current())
  member_logits = evaluation.restored_logits(restored, config, digits)
  expected = np.exp(members_lib.combine(member_logits))
  for p, want, logits in zip(predictions, expected,
                             np.swapaxes(member_logits, 0, 1)):
    assert p['digit'] == int(want.argmax())
    assert p['probabilities'] == pytest.approx(want.tolist(), abs=1e-5)
    assert p['members_agreeing'] == int(
        (logits.argmax(-1) == want.argmax()).sum())
    assert p['num_models'] == 3
    assert 'of 3 members agree' in result.stdout


@pytest.mark.slow
@pytest.mark.across_jax
def test_two_hosts_train_the_ensemble_one_host_trains_and_it_moves_devices(
    tmp_path, mnist_data_dir):
  """Two processes of one CPU device each: each host holds one member and
  assembles its own batches (the multi-host path); the same ensemble as
  one process with two devices. That checkpoint, written with its members
  on 2 devices, evaluates on 1 and resumes on 4 (2 on the members, 2 on
  the data)."""
  common = ['--config=configs/tiny.py', f'--config.data_dir={mnist_data_dir}',
            '--config.num_models=2']
  two = tmp_path / 'two_hosts'
  processes = launch_two_hosts([*common, f'--workdir={two}',
                                '--config.num_epochs=1'])
  logs = [p.communicate(timeout=600)[1] for p in processes]
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-3000:]
  assert '2 cpu device(s), parallelism mesh, 2 on the members' in logs[0]
  one = tmp_path / 'one_host'
  single = run_cli(*common, f'--workdir={one}', '--config.num_epochs=1',
                   devices=2)
  assert single.returncode == 0, single.stderr[-3000:]
  assert '2 cpu device(s), parallelism mesh, 2 on the members' in (
      single.stderr)
  config = config_checks.load_config('tiny')
  config.num_models = 2
  step_a, state_a = latest_checkpoint(config, str(two))
  step_b, state_b = latest_checkpoint(config, str(one))
  assert step_a == step_b == 20
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                               atol=1e-5)

  with open(one / 'eval_test.json') as f:
    on_2 = json.load(f)
  evaluated = run_main(*common, f'--workdir={one}', '--mode=eval')  # 1 device.
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  with open(one / 'eval_test.json') as f:
    on_1 = json.load(f)
  assert on_1['accuracy'] == on_2['accuracy']
  for a, b in zip(on_1['members'], on_2['members']):
    assert a['accuracy'] == b['accuracy']
    assert a['loss'] == pytest.approx(b['loss'], abs=1e-5)
  resumed = run_cli(*common, f'--workdir={one}', '--config.num_epochs=2',
                    devices=4)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from the checkpoint at step 20' in resumed.stderr
  assert '4 cpu device(s), parallelism mesh, 2 on the members' in (
      resumed.stderr)
  assert 'epoch 2/2' in resumed.stderr
