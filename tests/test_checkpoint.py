"""The choice of the best checkpoint and what is kept."""

import jax.numpy as jnp

from digits_jax import checkpoint


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
