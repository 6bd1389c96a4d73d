"""Evaluation: compiled inference over a split, the classification report,
and a trained run's best checkpoint (restore.py) reported on the test set."""

import functools
import json
import logging
import os

from etils import epath
import jax
import numpy as np
from scipy import special

from digits_jax import input_pipeline
from digits_jax import members as members_lib
from digits_jax import paths
from digits_jax import reports
from digits_jax import restore
from digits_jax import steps
from digits_jax import sweep
from digits_jax.errors import WriteFailed

log = logging.getLogger(__name__)


class Evaluator:
  """Compiled inference over a whole split, padded to the eval batch size."""

  def __init__(self, model, preprocess: steps.Preprocess, batch_size: int,
               compiler_options: dict | None = None):
    self._batch_size = batch_size
    self._logits = jax.jit(functools.partial(
        steps.predict_logits, model=model, preprocess=preprocess,
        batch_size=batch_size), compiler_options=compiler_options)

  @property
  def program(self):
    """The jitted inference, program(variables, uint8 images [N, 28, 28]) ->
    logits [N, C], N a multiple of the batch size: what `--mode=compile`
    lowers for a TPU."""
    return self._logits

  def logits(self, state: steps.TrainState, images: np.ndarray) -> np.ndarray:
    """One model's logits [N, C]."""
    return self.member_logits(state, images, members_lib.Members())[0]

  def member_logits(self, state: steps.TrainState, images: np.ndarray,
                    members: members_lib.Members) -> np.ndarray:
    """Each member's logits [K, N, C] ([1, N, C] for a single model), one
    member at a time through the same compiled program."""
    return self.logits_of(member_variables(state, members), images)

  def logits_of(self, variables: list, images: np.ndarray) -> np.ndarray:
    """[K, N, C] for the members' host variables (`member_variables`),
    which a caller predicting again and again (serve) gets once."""
    n = len(images)
    padded = -(-n // self._batch_size) * self._batch_size
    images = np.concatenate(
        [images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
    return np.stack([np.asarray(self._logits(member, images))[:n]
                     for member in variables])


def member_variables(state: steps.TrainState,
                     members: members_lib.Members) -> list:
  """Each member's inference variables as host copies: evaluation runs on
  this process's first device, whatever devices (or hosts) the train state
  is spread over. The averaged weights where the run keeps them."""
  return members.unstack(jax.device_get(state.inference_variables()))


def evaluator(restored: restore.Restored, config) -> Evaluator:
  """Inference for a restored run's model, compiled as training's."""
  return Evaluator(restored.model, restored.preprocess,
                   config.eval_batch_size, restored.compiler_options)


def restored_logits(restored: restore.Restored, config,
                    images: np.ndarray) -> np.ndarray:
  """[K, N, C]: each member's logits for uint8 digits [N, 28, 28]."""
  return evaluator(restored, config).member_logits(
      restored.state, images, restored.members)


def classification_report(logits: np.ndarray, labels: np.ndarray) -> dict:
  """Loss, accuracy, per-class accuracy and the confusion matrix."""
  log_probs = special.log_softmax(logits, axis=-1)
  predictions = logits.argmax(-1)
  num_classes = logits.shape[-1]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {
      'loss': float(-log_probs[np.arange(len(labels)), labels].mean()),
      'accuracy': float((predictions == labels).mean()),
      'num_examples': int(len(labels)),
      'per_class_accuracy': [float(a) for a in per_class],
      'confusion_matrix': confusion.tolist(),
  }


def ensemble_report(member_logits: np.ndarray, labels: np.ndarray) -> dict:
  """`classification_report` of the ensemble (the mean of the members'
  probabilities), with each member's accuracy and loss, their mean and
  sample standard deviation. One member: its plain report."""
  if len(member_logits) == 1:
    return classification_report(member_logits[0], labels)
  report = classification_report(members_lib.combine(member_logits), labels)
  members = [classification_report(logits, labels)
             for logits in member_logits]
  accuracy = np.array([m['accuracy'] for m in members])
  loss = np.array([m['loss'] for m in members])
  report.update({
      'members': [{'member': i, 'accuracy': m['accuracy'], 'loss': m['loss']}
                  for i, m in enumerate(members)],
      'member_accuracy_mean': float(accuracy.mean()),
      'member_accuracy_std': float(accuracy.std(ddof=1)),
      'member_loss_mean': float(loss.mean()),
      'member_loss_std': float(loss.std(ddof=1)),
  })
  return report


def evaluate_checkpoint(config, members: members_lib.Members,
                        workdir: epath.PathLike, platform,
                        splits=None, must_write: bool = True) -> dict:
  """Evaluates the best checkpoint in `workdir` on the official test set and
  writes `eval_test.json` and the report pictures beside it. What the
  machine refuses to write is a WriteFailed, or with `must_write` False
  (--mode=eval: the figures are in the log) one warning line."""
  workdir = paths.resolve(os.fspath(workdir))
  restored = restore.restore_best(config, members, workdir, platform)
  if splits is None:
    splits = input_pipeline.load_splits(config)
  member_logits = restored_logits(restored, config, splits.test_images)
  report = ensemble_report(member_logits, splits.test_labels)
  if restored.members.stacked:
    add_member_validation(
        report, restored.members,
        restored_logits(restored, config, splits.val_images),
        splits.val_labels, member_logits, splits.test_labels)
  report.update({'checkpoint_step': restored.step,
                 'epoch': restored.meta.get('epoch'), 'model': config.model})
  if restored.members.stacked:
    report['num_models'] = restored.members.num_models
  if jax.process_index() == 0:
    try:
      paths.write_atomically(workdir / 'eval_test.json',
                             json.dumps(report, indent=1))
      probabilities = np.exp(members_lib.combine(member_logits))
      written = reports.write_eval_reports(
          workdir, report, splits.test_images, splits.test_labels,
          probabilities)
      log.info('Wrote %s.', ', '.join(written))
    except WriteFailed as e:
      if must_write:
        raise
      log.warning('Warning: %s; the test figures below are not saved.', e)
  log.info('Test set (%d images), best checkpoint (step %d, epoch %s): '
           'accuracy %.4f, loss %.4f', report['num_examples'],
           restored.step, restored.meta.get('epoch'), report['accuracy'],
           report['loss'])
  if restored.members.stacked:
    log.info('The ensemble of %d: members\' accuracy %.4f +- %.4f (min %.4f, '
             'max %.4f). Each member, validation beside test:\n%s',
             restored.members.num_models,
             report['member_accuracy_mean'], report['member_accuracy_std'],
             min(m['accuracy'] for m in report['members']),
             max(m['accuracy'] for m in report['members']),
             _member_table(report['members']))
  chosen = report.get('chosen_by_validation')
  if chosen:
    log.info('The %d best members by validation (%s), the ensemble '
             'validation chose: validation %.4f, test %.4f.',
             len(chosen['members']),
             ', '.join(map(str, chosen['members'])), chosen['val_accuracy'],
             chosen['accuracy'])
  return report


def add_member_validation(report: dict, members: members_lib.Members,
                          val_logits: np.ndarray, val_labels: np.ndarray,
                          test_logits: np.ndarray,
                          test_labels: np.ndarray) -> None:
  """Each member's validation accuracy and loss beside its test figures in
  `report` (and a sweep member's values): which member validation would
  choose. For a sweep, the ensemble its members make, chosen on validation
  alone (members.choose_by_validation), and then its test accuracy."""
  for j, entry in enumerate(report['members']):
    val = classification_report(val_logits[j], val_labels)
    entry.update({'val_accuracy': val['accuracy'], 'val_loss': val['loss']})
    if members.is_sweep:
      entry['values'] = members.values[j]
  if members.is_sweep:
    chosen = members_lib.choose_by_validation(val_logits, val_labels)
    chosen['accuracy'] = members_lib.accuracy(
        test_logits[chosen['members']], test_labels)
    report['chosen_by_validation'] = chosen


def _member_table(members: list[dict]) -> str:
  """The members best first by validation, with their test accuracy."""
  order = members_lib.rank_by_validation(
      [m['val_accuracy'] for m in members], [m['val_loss'] for m in members])
  rows = [f'  member {m["member"]:3d}  val {m["val_accuracy"]:.4f}  test '
          f'{m["accuracy"]:.4f}' + (f'  {sweep.describe(m["values"])}'
                                    if 'values' in m else '')
          for m in (members[j] for j in order)]
  return '\n'.join(rows)
