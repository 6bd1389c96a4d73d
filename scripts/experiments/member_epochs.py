r"""Each member of a sweep or ensemble at its own best epoch, as the single
run with its values would be evaluated.

`--mode=eval` evaluates every member at the checkpoint the whole run chose
(the ensemble's best validation accuracy); a single run would take its own
best epoch. This restores every end-of-epoch checkpoint the workdir kept,
computes each member's validation and test accuracy at each, and reports,
per member, the test accuracy at the epoch of its best validation accuracy
(the later of equals, as the trainer's best checkpoint), then their mean,
spread, min and max. The choice reads the validation split only.

  python scripts/experiments/member_epochs.py --config=configs/fast.py \
      --config.sweep="seed=0,1,2,3,4" --workdir=runs/fast_seeds
"""

import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..')))
from digits_jax import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import evaluation  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import recipe  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import restore  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The run\'s config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'The run\'s workdir.')


def _accuracy(member_logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  return (member_logits.argmax(-1) == labels).mean(-1)


def main(argv):
  del argv
  config, members = members_lib.resolve(_CONFIG.value)
  platform = platform_lib.current(config.conv_impl)
  splits = input_pipeline.load_splits(config)
  manager = restore.open_checkpoints(_WORKDIR.value, config.checkpoints_to_keep)
  rows = []  # (epoch, val accuracies, test accuracies)
  for step in sorted(checkpoint.best_first(manager)):
    meta = checkpoint.read_meta(manager, step)
    model, tx = recipe.build(config, platform, recipe.data_record(meta),
                             traced_keys=members.traced_keys)
    state = checkpoint.restore_state(
        manager, step, members.abstract_train_state(model, tx))
    restored = restore.Restored(
        state=state, model=model, preprocess=recipe.preprocessing(config, meta),
        meta=meta, step=step, members=members, platform=platform)
    logits = lambda images: np.asarray(evaluation.restored_logits(
        restored, config, images)).reshape(members.num_models, len(images), -1)
    rows.append((meta.get('epoch'),
                 _accuracy(logits(splits.val_images), splits.val_labels),
                 _accuracy(logits(splits.test_images), splits.test_labels)))
  print(f'JAX {jax.__version__}; checkpoints of epochs '
        f'{[epoch for epoch, _, _ in rows]}')
  print(f'{"member":>6s}  {"values":34s}{"epoch":>6s}{"val":>8s}{"test":>8s}')
  chosen = []
  for m in range(members.num_models):
    # The best validation accuracy, the later epoch of equals.
    epoch, val, test = max(rows, key=lambda r: (r[1][m], r[0]))
    values = members.describe(m)
    print(f'{m:6d}  {values:34s}{epoch:6d}{val[m]:8.4f}{test[m]:8.4f}')
    chosen.append(test[m])
  chosen = np.array(chosen)
  print(f'test at each member\'s own best epoch: mean {chosen.mean():.4f}, '
        f'sd {chosen.std(ddof=1) if len(chosen) > 1 else 0:.4f}, '
        f'min {chosen.min():.4f}, max {chosen.max():.4f}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
