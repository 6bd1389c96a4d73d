r"""Would averaging over transformed copies of each digit help an ensemble?

Test-time augmentation: the members' probabilities averaged over a few
fixed transforms of each image (1-pixel shifts, +-6 degree rotations, 7%
zooms) as well as over the members. For the best checkpoint of a run
folder, prints the ensemble's accuracy on the validation split and on the
test set for each set of views, and for each view alone.

  python scripts/experiments/test_time_views.py --workdir=runs/ensemble

Only the validation column may decide whether views are worth adding to
`--mode=eval` or `--mode=predict`; the test column is there to report.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging as absl_logging
import numpy as np

sys.path.insert(0, os.path.abspath(
    os.path.join(os.path.dirname(__file__), '..', '..')))

from trained_config import trained_config  # pylint: disable=g-import-not-at-top

_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder whose best '
                               'checkpoint to read.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, "Where TFDS's mnist is (default: the run's own "
    'config.data_dir).')

# name: (angle in degrees, zoom, shift_x, shift_y in pixels).
VIEWS = {
    'identity': (0, 1, 0, 0),
    'left 1 px': (0, 1, -1, 0), 'right 1 px': (0, 1, 1, 0),
    'up 1 px': (0, 1, 0, -1), 'down 1 px': (0, 1, 0, 1),
    'rotated -6': (-6, 1, 0, 0), 'rotated +6': (6, 1, 0, 0),
    'zoom 0.93': (0, 0.93, 0, 0), 'zoom 1.07': (0, 1.07, 0, 0),
}
VIEW_SETS = {
    'identity only (the trainer today)': ['identity'],
    'identity + 4 shifts': ['identity', 'left 1 px', 'right 1 px', 'up 1 px',
                            'down 1 px'],
    'identity + 2 rotations': ['identity', 'rotated -6', 'rotated +6'],
    'identity + 2 zooms': ['identity', 'zoom 0.93', 'zoom 1.07'],
    'all 9 views': list(VIEWS),
}


def transformed(images: np.ndarray, view) -> np.ndarray:
  """uint8 digits [N, 28, 28] through one fixed affine view, as the
  training augmentation warps them (bilinear, zero from outside)."""
  import jax.numpy as jnp
  from digits_jax import augment
  degrees, zoom, shift_x, shift_y = view
  n = len(images)
  full = lambda value: jnp.full((n,), value, jnp.float32)
  params = augment.AffineParams(full(np.deg2rad(degrees)), full(zoom),
                                full(zoom), full(shift_x), full(shift_y))
  warped = augment.affine_warp(jnp.asarray(images, jnp.float32), params)
  return np.clip(np.rint(np.asarray(warped)), 0, 255).astype(np.uint8)


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)
  from digits_jax import members as members_lib
  from digits_jax import evaluation
  from digits_jax import input_pipeline
  from digits_jax import platform as platform_lib
  from digits_jax import restore

  config = trained_config(_WORKDIR.value)
  if _DATA_DIR.value is not None:
    config.data_dir = _DATA_DIR.value
  restored = restore.restore_best(*members_lib.resolve(config), _WORKDIR.value,
                                  platform_lib.current(config.conv_impl))
  splits = input_pipeline.load_splits(config)

  accuracy = {}
  for split, images, labels in (
      ('validation', splits.val_images, splits.val_labels),
      ('test', splits.test_images, splits.test_labels)):
    logits = {name: evaluation.restored_logits(restored, config,
                                               transformed(images, view))
              for name, view in VIEWS.items()}

    def ensemble_accuracy(names):
      pooled = np.concatenate([logits[name] for name in names])
      return float((members_lib.combine(pooled).argmax(-1) == labels).mean())

    accuracy[split] = {name: ensemble_accuracy(names)
                       for name, names in VIEW_SETS.items()}
    accuracy[split].update({f'{name} alone': ensemble_accuracy([name])
                            for name in VIEWS if name != 'identity'})

  print(f'{_WORKDIR.value}, best checkpoint (epoch '
        f"{restored.meta.get('epoch')}), the ensemble of "
        f"{len(logits['identity'])}:\n")
  print('| views | validation | test |')
  print('| --- | --- | --- |')
  for name in accuracy['validation']:
    print(f"| {name} | {accuracy['validation'][name]:.2%} | "
          f"{accuracy['test'][name]:.2%} |")
  print(json.dumps({'workdir': _WORKDIR.value, 'accuracy': accuracy}))


if __name__ == '__main__':
  app.run(main)
