"""The choice of the best checkpoint, what is kept, and what a damaged
checkpoint leaves usable."""

import os
import shutil

import helpers
import jax.numpy as jnp
import numpy as np
import pytest

from digits_jax import checkpoint
from digits_jax.errors import UserError


def test_the_best_checkpoint_is_the_highest_validation_accuracy(tmp_path):
  """Not the lowest loss, not the latest; a mid-epoch save (no metrics)
  never counts as the best; the best survives beside the two latest."""
  manager = checkpoint.create_manager(str(tmp_path / 'checkpoints'), keep=2)
  state = {'w': jnp.zeros(2)}
  history = [(10, 0.50, 0.90), (20, 0.93, 0.40), (30, 0.91, 0.20),
             (40, 0.70, 0.30)]
  for step, accuracy, loss in history:
    checkpoint.save(manager, step, state, {'epoch': step // 10},
                    {'val_accuracy': accuracy, 'val_loss': loss})
  checkpoint.save(manager, 45, state, {'epoch': 4}, None)
  assert manager.best_step() == 20
  assert manager.latest_step() == 45
  assert sorted(manager.all_steps()) == [20, 40, 45]
  reread = checkpoint.create_manager(str(tmp_path / 'checkpoints'), keep=2,
                                     read_only=True)
  assert reread.best_step() == 20
  assert checkpoint.read_meta(reread, 20) == {'epoch': 2}


def test_best_first_orders_by_validation_accuracy_then_step(tmp_path):
  manager = checkpoint.create_manager(str(tmp_path / 'checkpoints'), keep=5)
  state = {'w': jnp.zeros(2)}
  for step, accuracy in ((10, 0.5), (20, 0.9), (30, 0.9), (40, 0.7)):
    checkpoint.save(manager, step, state, {}, {'val_accuracy': accuracy,
                                               'val_loss': 1.0})
  checkpoint.save(manager, 45, state, {}, None)  # Mid-epoch: never.
  assert checkpoint.best_first(manager) == [30, 20, 40, 10]


# Each way a file of a checkpoint can be damaged: a partial copy, a disk
# that returned zeros, garbage, a file lost.
_DAMAGES = {
    'truncated': lambda data: data[:len(data) // 2],
    'zero_filled': lambda data: bytes(len(data)),
    'random_bytes': lambda data: np.random.default_rng(0).bytes(
        max(len(data), 100)),
    'deleted': None,
}


def _restorable(manager, steps, target, directory):
  """restore_first's (step, state) for `steps`, or the UserError it said."""
  try:
    resumed = checkpoint.restore_first(manager, steps, target, directory,
                                       check=lambda meta: None)
  except UserError as e:
    return None, str(e)
  return resumed[0], resumed[2]


@pytest.mark.slow
def test_every_damaged_file_falls_back_to_the_newest_good_checkpoint(
    trained_run, tmp_path):
  """Every file of the latest checkpoint (step 40 of tiny's 2 epochs), in
  each way: the training's view (newest first) and evaluation's (best
  first) restore step 20 exactly, or step 40 exactly where the damage is
  one orbax does not need; never another state, never a traceback, and
  step 20's files untouched."""
  config, workdir, _ = trained_run
  source = os.path.join(workdir, 'checkpoints')
  target = helpers.latest_checkpoint(config, workdir)[1]
  original = checkpoint.create_manager(source, 2, read_only=True)
  intact = {step: checkpoint.restore_state(original, step, target)
            for step in (20, 40)}
  files = sorted(os.path.relpath(os.path.join(folder, name), source)
                 for folder, _, names in os.walk(os.path.join(source, '40'))
                 for name in names)
  assert len(files) > 10, files
  restored = {}
  for relative in files:
    for damage, change in _DAMAGES.items():
      copy = tmp_path / f'{damage}-{relative.replace(os.sep, "_")}'
      shutil.copytree(source, copy)
      aside = tmp_path / f'aside-{copy.name}'
      path = copy / relative
      if change is None:
        path.unlink()
      else:
        path.write_bytes(change(path.read_bytes()))
      before = {p: p.read_bytes() for p in (copy / '20').rglob('*')
                if p.is_file()}
      for view in ('best', 'newest'):  # Evaluation's, then training's.
        if view == 'newest':  # As train.py opens them.
          unreadable = checkpoint.steps_with_unreadable_metrics(copy)
          if unreadable:
            checkpoint.set_aside(copy, aside, unreadable, 'test')
        manager = checkpoint.create_manager(copy, 2,
                                            read_only=view == 'best')
        steps = (sorted(manager.all_steps(), reverse=True) if view == 'newest'
                 else checkpoint.best_first(manager))
        step, state = _restorable(manager, steps, target, copy)
        case = (relative, damage, view, step)
        assert step in (20, 40), (case, state)
        helpers.assert_same_state(state, intact[step], rtol=0, atol=0)
        restored[relative, damage, view] = step
      after = {p: p.read_bytes() for p in (copy / '20').rglob('*')
               if p.is_file()}
      assert after == before, (relative, damage)
      # Not deleted: where it was, or set aside.
      assert (copy / '40').exists() or (aside / '40').exists(), (
          relative, damage)
  # The tolerance has teeth: the checkpoint's record and the state's tree
  # metadata, damaged in any way, fall back in both views (others, such as
  # a lost commit_success.txt, orbax does not need to restore step 40).
  for relative in ('40/meta/metadata', '40/state/_METADATA'):
    assert {restored[relative, damage, view] for damage in _DAMAGES
            for view in ('best', 'newest')} == {20}, relative
  assert 20 < sum(step == 20 for step in restored.values()) < len(restored)

  # Both damaged: one error line naming each.
  copy = tmp_path / 'both'
  shutil.copytree(source, copy)
  for step in ('20', '40'):
    (copy / step / 'meta' / 'metadata').write_bytes(b'garbage')
  manager = checkpoint.create_manager(copy, 2, read_only=True)
  step, message = _restorable(manager, checkpoint.best_first(manager),
                              target, copy)
  assert step is None and 'no checkpoint in' in message, message
  assert 'step 40: ' in message and 'step 20: ' in message, message


def test_a_record_from_before_the_data_shape_reads_as_mnists():
  """Checkpoints written before the record held the data's shape and
  classes restore as the MNIST they were trained on."""
  from digits_jax import recipe  # pylint: disable=g-import-not-at-top
  old = {'model': 'improved_lenet', 'input_size': 32, 'pixel_mean': 33.3,
         'pixel_std': 78.6, 'epoch': 3}
  assert recipe.data_record(old) == {
      'image_shape': [28, 28, 1], 'num_classes': 10, 'pixel_mean': 33.3,
      'pixel_std': 78.6}
  new = {**old, 'image_shape': [20, 24, 1], 'num_classes': 4}
  assert recipe.data_record(new)['image_shape'] == [20, 24, 1]
  assert recipe.data_record(new)['num_classes'] == 4
