r"""Where an ensemble's test errors come from, and what pooling runs would give.

For the best checkpoint of each run folder (each restored with the config it
was trained with, as its checkpoint recorded it), prints every member's and
the ensemble's test accuracy, then for all the members pooled together:

- the ensemble's errors by how many members were right on them (an error no
  member gets right cannot be fixed by combining these members; one that
  most get right only needs members that disagree less badly),
- the images some member gets wrong, and those all get wrong.

  python scripts/experiments/ensemble_errors.py --workdir=runs/ensemble \
      --workdir=runs/ensemble_other

Pooling runs is analysis, not a model choice: it reads the test set, so it
must not pick a config (configs/ensemble.py is chosen on validation only).
Prints a Markdown summary and one JSON line.
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

_WORKDIRS = flags.DEFINE_multi_string(
    'workdir', None, 'Run folder whose best checkpoint to read; repeat to '
    'pool several runs.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, "Where TFDS's mnist is (default: each run's own "
    'config.data_dir).')


def error_sources(member_logits: np.ndarray, labels: np.ndarray) -> dict:
  """The ensemble's errors counted by how many members were right on them."""
  from digits_jax import members as members_lib
  right = member_logits.argmax(-1) == labels  # [K, N]
  wrong = members_lib.combine(member_logits).argmax(-1) != labels
  members_right = right.sum(0)
  return {
      'num_members': int(len(member_logits)),
      'ensemble_errors': int(wrong.sum()),
      'ensemble_errors_by_members_right': np.bincount(
          members_right[wrong], minlength=len(member_logits) + 1).tolist(),
      'some_member_wrong': int((~right).any(0).sum()),
      'all_members_wrong': int((~right).all(0).sum()),
  }


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)
  from digits_jax import evaluation
  from digits_jax import input_pipeline
  from digits_jax import members as members_lib
  from digits_jax import platform as platform_lib
  from digits_jax import restore

  labels, pooled, runs = None, [], []
  for workdir in _WORKDIRS.value:
    config = trained_config(workdir)
    if _DATA_DIR.value is not None:
      config.data_dir = _DATA_DIR.value
    restored = restore.restore_best(*members_lib.resolve(config), workdir,
                                    platform_lib.current(config.conv_impl))
    splits = input_pipeline.load_splits(config)
    member_logits = evaluation.restored_logits(restored, config,
                                               splits.test_images)
    labels = splits.test_labels
    report = evaluation.ensemble_report(member_logits, labels)
    runs.append({
        'workdir': workdir, 'epoch': restored.meta.get('epoch'),
        'accuracy': report['accuracy'],
        'member_accuracy': [float((l.argmax(-1) == labels).mean())
                            for l in member_logits]})
    pooled.append(member_logits)
  pooled = np.concatenate(pooled)
  sources = error_sources(pooled, labels)
  sources['pooled_accuracy'] = evaluation.ensemble_report(
      pooled, labels)['accuracy']

  print('| run | epoch | members | ensemble |')
  print('| --- | --- | --- | --- |')
  for run in runs:
    members = ', '.join(f'{a:.2%}' for a in run['member_accuracy'])
    print(f"| {run['workdir']} | {run['epoch']} | {members} | "
          f"{run['accuracy']:.2%} |")
  print(f"\nAll {sources['num_members']} members as one ensemble: "
        f"{sources['pooled_accuracy']:.2%} "
        f"({sources['ensemble_errors']} errors).")
  print('Its errors by how many members were right on them: ' + ', '.join(
      f'{right} right: {count}' for right, count in
      enumerate(sources['ensemble_errors_by_members_right']) if count) + '.')
  print(f"Images some member gets wrong: {sources['some_member_wrong']}; "
        f"all get wrong: {sources['all_members_wrong']}.")
  print(json.dumps({'runs': runs, **sources}))


if __name__ == '__main__':
  app.run(main)
