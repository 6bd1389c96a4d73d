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

from digits_jax import checkpoint
from digits_jax import input_pipeline
from digits_jax import paths
from digits_jax import platform as platform_lib
from digits_jax import recipe
from digits_jax import reports
from digits_jax import steps
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
    n = len(images)
    padded = -(-n // self._batch_size) * self._batch_size
    images = np.concatenate(
        [images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
    # Host copies: evaluation runs on this process's first device, whatever
    # devices (or hosts) the train state is spread over.
    variables = jax.device_get({'params': state.params,
                                'batch_stats': state.batch_stats})
    return np.asarray(self._logits(variables, images))[:n]

  def evaluate(self, state: steps.TrainState, images: np.ndarray,
               labels: np.ndarray) -> dict:
    logits = self.logits(state, images)
    return classification_report(logits, labels)


def log_softmax(logits: np.ndarray) -> np.ndarray:
  """Log-probabilities of host logits [..., classes]."""
  return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def classification_report(logits: np.ndarray, labels: np.ndarray) -> dict:
  """Loss, accuracy, per-class accuracy and the confusion matrix."""
  log_probs = log_softmax(logits)
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


@dataclasses.dataclass(frozen=True)
class Restored:
  state: steps.TrainState
  model: Any
  preprocess: steps.Preprocess
  meta: dict
  step: int

  def evaluator(self, config) -> Evaluator:
    """Inference for this checkpoint's model, compiled as training's."""
    return Evaluator(
        self.model, self.preprocess, config.eval_batch_size,
        platform_lib.current(config.conv_impl).compiler_options)


def restore_best(config, workdir: epath.PathLike) -> Restored:
  """The best checkpoint in `workdir`, on this process's devices."""
  workdir = paths.resolve(os.fspath(workdir))
  directory = workdir / 'checkpoints'
  if not directory.exists():
    raise UserError(f'no checkpoints in {workdir}; train first or point '
                    '--workdir at a training run')
  manager = checkpoint.create_manager(directory, config.checkpoints_to_keep,
                                      read_only=True)
  step = manager.best_step()
  if step is None:
    raise UserError(f'no complete checkpoint in {directory}; train first')
  meta = checkpoint.read_meta(manager, step)
  checkpoint.check_compatible(meta, config, workdir)
  model, tx, preprocess = recipe.build(config, meta)
  target = steps.create_train_state(model, tx, jax.random.key(0), config.input_size)
  state = checkpoint.restore_state(manager, step, target)
  return Restored(state=state, model=model, preprocess=preprocess, meta=meta,
                  step=int(step))


def evaluate_checkpoint(config, workdir: epath.PathLike, splits=None) -> dict:
  """Evaluates the best checkpoint in `workdir` on the official test set and
  writes `eval_test.json` and the report pictures beside it."""
  workdir = paths.resolve(os.fspath(workdir))
  restored = restore_best(config, workdir)
  if splits is None:
    splits = input_pipeline.load_splits(config)
  logits = restored.evaluator(config).logits(restored.state,
                                             splits.test_images)
  report = classification_report(logits, splits.test_labels)
  report.update({'checkpoint_step': restored.step,
                 'epoch': restored.meta.get('epoch'), 'model': config.model})
  if jax.process_index() == 0:
    paths.write_atomically(workdir / 'eval_test.json',
                           json.dumps(report, indent=1))
    probabilities = np.exp(log_softmax(logits))
    written = reports.write_eval_reports(workdir, report, splits.test_images,
                                         splits.test_labels, probabilities)
    log.info('Wrote %s.', ', '.join(written))
  log.info('Test set (%d images), best checkpoint (step %d, epoch %s): '
           'accuracy %.4f, loss %.4f', report['num_examples'],
           restored.step, restored.meta.get('epoch'), report['accuracy'],
           report['loss'])
  return report
