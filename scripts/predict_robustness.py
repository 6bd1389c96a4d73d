r"""How `--mode=predict` holds up on the images people have: accuracy of a
checkpoint on variations of the official test digits, next to the plain ones.

Each variation renders MNIST test digits the way a photo, scan or crop of
handwriting looks (tight crops, margins, polarity, coloured ink, shading,
JPEG, stroke width, scale, rotation, transparency), goes through the same
`digit_image.to_mnist` as image files do, and is predicted by the best
checkpoint in --workdir (an ensemble predicts with all its members):

  python scripts/predict_robustness.py --config=configs/fast.py \
      --workdir=runs/fast --num_digits=1000

Prints a Markdown table (accuracy, its difference from the plain digits,
images refused) and one JSON line.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from digits_jax.photo_variations import VARIATIONS  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run folder to restore.')
_NUM_DIGITS = flags.DEFINE_integer('num_digits', 1000,
                                   'Official test digits per variation.')

def main(argv):
  del argv
  from digits_jax import digit_image  # pylint: disable=g-import-not-at-top
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top
  from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import restore  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:  # Orbax's and TFDS's INFO lines.
    absl_logging.set_verbosity(absl_logging.WARNING)
  config = _CONFIG.value
  config.max_test_examples = _NUM_DIGITS.value
  splits = input_pipeline.load_splits(config)
  digits, labels = splits.test_images, splits.test_labels
  restored = restore.restore_best(*members_lib.resolve(config), _WORKDIR.value,
                                  platform_lib.current(config.conv_impl))

  def accuracy(images):
    predicted = members_lib.combine(
        evaluation.restored_logits(restored, config, np.stack(images))
    ).argmax(-1)
    return predicted

  plain = float((accuracy(list(digits)) == labels).mean())
  rows = []
  for name, make in VARIATIONS.items():
    start = time.perf_counter()
    images, refused = [], 0
    for digit in digits:
      try:
        images.append(digit_image.to_mnist(make(digit)))
      except digit_image.ImageError:
        refused += 1
        images.append(None)
    kept = [i for i, image in enumerate(images) if image is not None]
    correct = np.zeros(len(digits), bool)
    if kept:
      predicted = accuracy([images[i] for i in kept])
      correct[kept] = predicted == labels[kept]
    rows.append({'variation': name, 'accuracy': float(correct.mean()),
                 'refused': refused,
                 'seconds': time.perf_counter() - start})
  print(f'{len(digits)} official test digits per variation; checkpoint '
        f'{_WORKDIR.value} (step {restored.step}, '
        f'{restored.members.num_models} model(s)).\n')
  print('| variation | accuracy | vs plain | refused |')
  print('| --- | --- | --- | --- |')
  print(f'| plain MNIST test digits | {plain:.2%} | | |')
  for row in rows:
    print(f'| {row["variation"]} | {row["accuracy"]:.2%} | '
          f'{(row["accuracy"] - plain) * 100:+.1f} pp | {row["refused"]} |')
  print(json.dumps({'plain': plain, 'variations': rows,
                    'num_digits': len(digits)}))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
