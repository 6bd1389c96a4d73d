"""Evaluation: compiled inference over a split, the classification report,
and a trained run's best checkpoint (restore.py) reported on the test set."""

import functools
import json
import logging
import os

from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from digits_jax import input_pipeline
from digits_jax import members as members_lib
from digits_jax import parallel as parallel_lib
from digits_jax import paths
from digits_jax import reports
from digits_jax import restore
from digits_jax import steps
from digits_jax import sweep
from digits_jax.errors import WriteFailed

log = logging.getLogger(__name__)


class Evaluator:
  """Every member's inference over a whole split in one compiled program,
  on the run's devices: the members' weights stay where the train state
  keeps them (replicated, or spread over the mesh's member axis), and each
  batch of images is split over its data axis. The batch is the eval batch
  size rounded up to a multiple of the data axis; a split is padded to
  whole batches."""

  def __init__(self, model, preprocess: steps.Preprocess, batch_size: int,
               platform, devices: parallel_lib.DataParallel | None = None,
               members: members_lib.Members = members_lib.Members()):
    if devices is None:  # This process's first device.
      devices = parallel_lib.for_inference(members.num_models,
                                           devices=jax.local_devices()[:1])
    # Where the states it is given are (pmap's have a device axis).
    self._state_devices = devices
    self._devices = devices = devices.for_inference()
    self._members = members
    data = devices.data_devices
    self.batch_size = -(-batch_size // data) * data
    logits = functools.partial(steps.predict_logits, model=model,
                               preprocess=preprocess)

    def member_logits(variables, batches):
      """[K, M, B, C]: each member's logits, the members vmapped or side
      by side as training runs them (the platform's `vmap_members`)."""
      if not members.stacked:
        return logits(variables, batches)[None]
      if platform.vmap_members:
        return jax.vmap(logits, in_axes=(0, None))(variables, batches)
      return jnp.stack([logits(members_lib.member_of(variables, i), batches)
                        for i in range(members.num_models)])

    shardings = devices.shardings
    self._program = jax.jit(
        member_logits,
        in_shardings=(shardings.state, devices.eval_batch_sharding),
        out_shardings=shardings.state,
        compiler_options=platform.compiler_options)

  @property
  def program(self):
    """The compiled inference, program(variables, uint8 images in batches
    [M, B, H, W]) -> each member's logits [K, M, B, C]: what
    `--mode=compile` lowers for a TPU."""
    return self._program

  def logits(self, state: steps.TrainState, images: np.ndarray) -> np.ndarray:
    """A single model's logits [N, C]."""
    return self.member_logits(state, images)[0]

  def member_logits(self, state: steps.TrainState,
                    images: np.ndarray) -> np.ndarray:
    """Each member's logits [K, N, C] ([1, N, C] for a single model) for
    uint8 images [N, H, W], as host values. `state`: on the devices (as
    training keeps it, or `place`d) or on the host. The averaged weights
    where the run keeps them."""
    devices = self._devices
    variables = devices.on_devices(self._state_devices.unreplicate(
        state.inference_variables()), devices.shardings.state)
    n = len(images)
    padded = -(-n // self.batch_size) * self.batch_size
    images = np.concatenate(
        [images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
    batches = devices.on_devices(
        images.reshape(-1, self.batch_size, *images.shape[1:]),
        devices.eval_batch_sharding)
    logits = devices.to_host(self._program(variables, batches))
    return np.asarray(logits).reshape(len(logits), padded, -1)[:, :n]

  def place(self, state: steps.TrainState) -> steps.TrainState:
    """`state` on the devices, for a caller predicting again and again
    (serve)."""
    return self._devices.on_devices(state, self._devices.shardings.state)


def evaluator(restored: restore.Restored, config) -> Evaluator:
  """Inference for a restored run's members on every device of the run,
  compiled as training's."""
  return Evaluator(restored.model, restored.preprocess,
                   config.eval_batch_size, restored.platform,
                   parallel_lib.for_inference(restored.members.num_models,
                                              config.member_devices),
                   restored.members)


def restored_logits(restored: restore.Restored, config,
                    images: np.ndarray) -> np.ndarray:
  """[K, N, C]: each member's logits for uint8 digits [N, H, W]."""
  return evaluator(restored, config).member_logits(restored.state, images)


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
