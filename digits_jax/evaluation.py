"""Evaluation: compiled inference over a split, the classification report,
and the best checkpoint restored and reported on the test set."""

import dataclasses
import functools
import json
import logging
import os
from typing import Any

from etils import epath
import jax
import numpy as np
from scipy import special

from digits_jax import checkpoint
from digits_jax import ensemble
from digits_jax import input_pipeline
from digits_jax import paths
from digits_jax import recipe
from digits_jax import reports
from digits_jax import steps
from digits_jax import sweep
from digits_jax.errors import UserError

log = logging.getLogger(__name__)


class Evaluator:
  """Compiled inference over a whole split, padded to the eval batch size."""

  def __init__(self, model, preprocess: steps.Preprocess, batch_size: int,
               compiler_options: dict | None = None):
    self._batch_size = batch_size
    self._logits = jax.jit(functools.partial(
        steps.predict_logits, model=model, preprocess=preprocess,
        batch_size=batch_size), compiler_options=compiler_options)

  def logits(self, state: steps.TrainState, images: np.ndarray) -> np.ndarray:
    """One model's logits [N, C]."""
    return self.member_logits(state, images, ensemble.Members())[0]

  def member_logits(self, state: steps.TrainState, images: np.ndarray,
                    members: ensemble.Members) -> np.ndarray:
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
                     members: ensemble.Members) -> list:
  """Each member's inference variables as host copies: evaluation runs on
  this process's first device, whatever devices (or hosts) the train state
  is spread over. The averaged weights where the run keeps them."""
  return members.unstack(jax.device_get(state.inference_variables()))


def classification_report(logits: np.ndarray, labels: np.ndarray) -> dict:
  """Loss, accuracy, per-class accuracy and the confusion matrix."""
  log_probs = special.log_softmax(logits, axis=-1)
  predictions = logits.argmax(-1)
  confusion = np.zeros((steps.NUM_CLASSES, steps.NUM_CLASSES), np.int64)
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
  report = classification_report(ensemble.combine(member_logits), labels)
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


@dataclasses.dataclass(frozen=True)
class Restored:
  state: steps.TrainState
  model: Any
  preprocess: steps.Preprocess
  meta: dict
  step: int
  members: ensemble.Members
  # What it is compiled for (restore_best's).
  compiler_options: dict | None

  def evaluator(self, config) -> Evaluator:
    """Inference for this checkpoint's model, compiled as training's."""
    return Evaluator(self.model, self.preprocess, config.eval_batch_size,
                     self.compiler_options)

  def member_logits(self, config, images: np.ndarray) -> np.ndarray:
    """[K, N, C]: each member's logits for uint8 digits [N, 28, 28]."""
    return self.evaluator(config).member_logits(self.state, images,
                                                self.members)


def open_checkpoints(workdir: epath.PathLike, checkpoints_to_keep: int = 1):
  """A read-only manager of the checkpoints in `workdir`; a one-line error
  where there are none."""
  workdir = paths.resolve(os.fspath(workdir))
  directory = workdir / 'checkpoints'
  if not directory.exists():
    raise UserError(f'no checkpoints in {workdir}; train first or point '
                    '--workdir at a training run')
  manager = checkpoint.create_manager(directory, checkpoints_to_keep,
                                      read_only=True)
  if not checkpoint.best_first(manager):
    raise UserError(f'no complete checkpoint in {directory}; train first')
  return manager


def best_checkpoint(workdir: epath.PathLike, checkpoints_to_keep: int = 1):
  """(manager, step, metadata) of the best checkpoint in `workdir` whose
  record reads, read only."""
  manager = open_checkpoints(workdir, checkpoints_to_keep)
  for step in checkpoint.best_first(manager):
    try:
      return manager, step, checkpoint.read_meta(manager, step)
    except Exception:  # pylint: disable=broad-except
      continue  # restore_best names it; here the record alone matters.
  raise UserError(f'no checkpoint record in {workdir} reads; use a fresh '
                  '--workdir')


def restore_best(config, workdir: epath.PathLike, platform,
                 member: str = '') -> Restored:
  """The best checkpoint in `workdir` that restores, on this process's
  devices (a damaged one is passed over for the next best, with a
  warning), built and compiled for `platform` (platform.py).

  `member`: '' for all its members (an ensemble, a sweep); 'best' for the
  member with the best validation accuracy at that checkpoint; or a
  member's number.
  """
  config = sweep.apply(config)
  workdir = paths.resolve(os.fspath(workdir))
  manager = open_checkpoints(workdir, config.checkpoints_to_keep)
  # The state's shapes do not depend on the standardization constants.
  model, tx, _ = recipe.build(config, {'pixel_mean': 0.0, 'pixel_std': 1.0},
                              platform)
  members = recipe.members(config, platform)
  step, meta, state, _ = checkpoint.restore_first(
      manager, checkpoint.best_first(manager),
      members.abstract_train_state(model, tx, config.input_size),
      workdir / 'checkpoints',
      check=lambda meta: checkpoint.check_compatible(meta, config, workdir))
  model, _, preprocess = recipe.build(config, meta, platform)
  if member:
    index = _member_index(member, members.num_models,
                          checkpoint.read_metrics(workdir / 'checkpoints',
                                                  step))
    log.info('Member %d of %d (%s).', index, members.num_models,
             'the best by validation accuracy' if member == 'best'
             else 'as asked')
    if members.stacked:
      state = ensemble.member_of(state, index)
    members = ensemble.Members(vmapped=members.vmapped, ema=members.ema)
  return Restored(state=state, model=model, preprocess=preprocess, meta=meta,
                  step=int(step), members=members,
                  compiler_options=platform.compiler_options)


def _member_index(member: str, num_models: int, metrics: dict | None) -> int:
  """--member's number: 'best' by the checkpoint's own record of each
  member's validation accuracy (the lower loss among equals)."""
  if member == 'best':
    if num_models == 1:
      return 0
    if not metrics or 'member_val_accuracy' not in metrics:
      raise UserError('--member=best: this checkpoint does not record its '
                      'members\' validation accuracy (written before it '
                      'did); name a member, --member=0 to '
                      f'{num_models - 1}')
    return sweep.rank_members(metrics['member_val_accuracy'],
                              metrics['member_val_loss'])[0]
  if not member.isdigit() or int(member) >= num_models:
    raise UserError(f'--member={member!r} must be best or a member\'s number, '
                    f'0 to {num_models - 1}')
  return int(member)


def evaluate_checkpoint(config, workdir: epath.PathLike, platform,
                        splits=None) -> dict:
  """Evaluates the best checkpoint in `workdir` on the official test set and
  writes `eval_test.json` and the report pictures beside it."""
  config = sweep.apply(config)
  workdir = paths.resolve(os.fspath(workdir))
  restored = restore_best(config, workdir, platform)
  if splits is None:
    splits = input_pipeline.load_splits(config)
  member_logits = restored.member_logits(config, splits.test_images)
  report = ensemble_report(member_logits, splits.test_labels)
  if restored.members.stacked:
    _add_member_validation(report, config, restored, splits, member_logits)
  report.update({'checkpoint_step': restored.step,
                 'epoch': restored.meta.get('epoch'), 'model': config.model})
  if restored.members.stacked:
    report['num_models'] = restored.members.num_models
  if jax.process_index() == 0:
    paths.write_atomically(workdir / 'eval_test.json',
                           json.dumps(report, indent=1))
    probabilities = np.exp(ensemble.combine(member_logits))
    written = reports.write_eval_reports(workdir, report, splits.test_images,
                                         splits.test_labels, probabilities)
    log.info('Wrote %s.', ', '.join(written))
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


def _add_member_validation(report: dict, config, restored: Restored,
                           splits, test_logits) -> None:
  """Each member's validation accuracy and loss beside its test figures
  (and a sweep member's values): which member validation would choose,
  and how its choice fares on the test set."""
  val_logits = restored.member_logits(config, splits.val_images)
  values = sweep.member_values(config)
  for j, entry in enumerate(report['members']):
    val = classification_report(val_logits[j], splits.val_labels)
    entry.update({'val_accuracy': val['accuracy'], 'val_loss': val['loss']})
    if values:
      entry['values'] = values[j]
  if values:
    report['chosen_by_validation'] = _top_members_ensemble(
        report['members'], val_logits, splits.val_labels, test_logits,
        splits.test_labels)


def _top_members_ensemble(members: list[dict], val_logits, val_labels,
                          test_logits, test_labels) -> dict:
  """A sweep's members as an ensemble, chosen on validation only: the k
  best members by validation accuracy, k the one whose ensemble is best on
  validation (the fewer among equals); then its test accuracy."""
  order = sweep.rank_members([m['val_accuracy'] for m in members],
                             [m['val_loss'] for m in members])
  def accuracy(logits, labels, chosen):
    return float((ensemble.combine(logits[chosen]).argmax(-1) == labels
                  ).mean())
  val_by_k = [accuracy(val_logits, val_labels, order[:k])
              for k in range(1, len(order) + 1)]
  k = 1 + int(np.argmax(val_by_k))
  return {'members': order[:k], 'val_accuracy': val_by_k[k - 1],
          'accuracy': accuracy(test_logits, test_labels, order[:k]),
          'val_accuracy_by_k': val_by_k}


def _member_table(members: list[dict]) -> str:
  """The members best first by validation, with their test accuracy."""
  order = sweep.rank_members([m['val_accuracy'] for m in members],
                             [m['val_loss'] for m in members])
  rows = [f'  member {m["member"]:3d}  val {m["val_accuracy"]:.4f}  test '
          f'{m["accuracy"]:.4f}' + (f'  {sweep.describe(m["values"])}'
                                    if 'values' in m else '')
          for m in (members[j] for j in order)]
  return '\n'.join(rows)
