"""Training and evaluation: pure steps, a device-resident data path, the loop.

The dataset lives on the device as uint8. An epoch's order is a device-side
permutation; each dispatch runs `steps_per_dispatch` train steps under
`lax.scan`, gathering, padding, augmenting and standardizing its batches
inside the compiled program, and hands metrics back once. `train_step` itself
is a pure function of (state, batch, key) so that jit, pmap, a device mesh or
scan can wrap it unchanged.
"""

import dataclasses
import functools
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from typing import Any, Callable

from absl import logging
from etils import epath
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from digits_jax import augment
from digits_jax import checkpoint
from digits_jax import input_pipeline
from digits_jax import models
from digits_jax import optim
from digits_jax import parallel as parallel_lib
from digits_jax import paths
from digits_jax import platform as platform_lib
from digits_jax import reports
from digits_jax.errors import UserError

MNIST_SIZE = 28
NUM_CLASSES = 10


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


@struct.dataclass
class Preprocess:
  """uint8 digits [B, 28, 28] -> standardized model input [B, S, S, 1]."""
  input_size: int = struct.field(pytree_node=False)
  pixel_mean: float = struct.field(pytree_node=False)
  pixel_std: float = struct.field(pytree_node=False)
  rotation_degrees: float = struct.field(pytree_node=False, default=0.0)
  zoom_range: float = struct.field(pytree_node=False, default=0.0)
  shift_range: float = struct.field(pytree_node=False, default=0.0)

  def __call__(self, images, augment_key=None, axis_name=None):
    """Under pmap (`axis_name`), the augmentation is drawn for the global
    batch and sliced, so it does not depend on the number of devices."""
    x = images.astype(jnp.float32)
    pad = (self.input_size - MNIST_SIZE) // 2
    if pad:
      x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    if augment_key is not None:
      local = x.shape[0]
      shards = 1 if axis_name is None else jax.lax.psum(1, axis_name)
      params = augment.random_params(
          augment_key, local * shards, self.input_size,
          rotation_degrees=self.rotation_degrees, zoom_range=self.zoom_range,
          shift_range=self.shift_range)
      if axis_name is not None:
        start = jax.lax.axis_index(axis_name) * local
        params = jax.tree.map(
            lambda p: jax.lax.dynamic_slice_in_dim(p, start, local), params)
      x = augment.affine_warp(x, params)
    return ((x - self.pixel_mean) / self.pixel_std)[..., None]


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(state: TrainState, batch: dict, key: jax.Array, *,
               model, tx: optax.GradientTransformation, preprocess: Preprocess,
               augment_images: bool, axis_name: str | None = None):
  """One optimizer step: (state, batch, key) -> (state, metrics).

  Randomness is `fold_in(key, step)`, so a run restored at any step draws
  the same augmentation and dropout as the run that never stopped.
  `axis_name` names the pmap axis to average gradients and metrics over;
  the model must then carry the same axis name (BatchNorm, dropout).
  """
  step_key = jax.random.fold_in(key, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images = preprocess(batch['image'],
                      augment_key if augment_images else None, axis_name)

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key})
    loss = cross_entropy(logits, batch['label']).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = {'loss': loss,
             'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state)
  return new_state, metrics


def scan_train_steps(step_fn: Callable, state: TrainState, images: jax.Array,
                     labels: jax.Array, batch_indices: jax.Array,
                     key: jax.Array, *, unroll: bool = False):
  """Runs one step per row of `batch_indices` [K, B] over device data.

  Returns the final state and each step's metrics, stacked to shape [K].
  `unroll=True` compiles the K steps as straight-line code, which XLA:CPU
  needs (platform.py).
  """

  def body(state, indices):
    batch = {'image': images[indices], 'label': labels[indices]}
    return step_fn(state, batch, key)

  return jax.lax.scan(body, state, batch_indices, unroll=unroll)


def scan_train_batches(step_fn: Callable, state: TrainState, batches: dict,
                       key: jax.Array, *, unroll: bool = False):
  """Like `scan_train_steps`, over batches assembled by the hosts: a dict of
  'image' [K, B, 28, 28] and 'label' [K, B] (the multi-host path)."""
  return jax.lax.scan(lambda s, b: step_fn(s, b, key), state, batches,
                      unroll=unroll)


def epoch_batches(key: jax.Array, epoch: int, num_examples: int,
                  batch_size: int) -> jax.Array:
  """This epoch's shuffled example indices as [steps_per_epoch, batch_size].

  The remainder that does not fill a batch is left out of this epoch (a
  different remainder each epoch).
  """
  steps = num_examples // batch_size
  order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
  return order[:steps * batch_size].reshape(steps, batch_size)


def predict_logits(variables, images, *, model, preprocess: Preprocess,
                   batch_size: int):
  """Logits for uint8 images [N, 28, 28], N a multiple of `batch_size`."""

  def logits_of(batch):
    return model.apply(variables, preprocess(batch), train=False)

  batches = images.reshape(-1, batch_size, *images.shape[1:])
  return jax.lax.map(logits_of, batches).reshape(-1, NUM_CLASSES)


# ----------------------------------------------------------------------------
# The loop.


def create_train_state(model, tx, key, input_size: int) -> TrainState:
  dummy = jnp.zeros((1, input_size, input_size, 1), jnp.float32)
  variables = model.init({'params': key}, dummy, train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}),
                    opt_state=tx.init(params))


def parameter_counts(state: TrainState) -> dict:
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return {'trainable': count(state.params),
          'batch_stats': count(state.batch_stats)}


class Evaluator:
  """Compiled inference over a whole split, padded to the eval batch size."""

  def __init__(self, model, preprocess: Preprocess, batch_size: int,
               compiler_options: dict | None = None):
    self._batch_size = batch_size
    self._logits = jax.jit(functools.partial(
        predict_logits, model=model, preprocess=preprocess,
        batch_size=batch_size), compiler_options=compiler_options)

  def logits(self, state: TrainState, images: np.ndarray) -> np.ndarray:
    n = len(images)
    padded = -(-n // self._batch_size) * self._batch_size
    images = np.concatenate(
        [images, np.zeros((padded - n, *images.shape[1:]), images.dtype)])
    # Host copies: evaluation runs on this process's first device, whatever
    # devices (or hosts) the train state is spread over.
    variables = jax.device_get({'params': state.params,
                                'batch_stats': state.batch_stats})
    return np.asarray(self._logits(variables, images))[:n]

  def evaluate(self, state: TrainState, images: np.ndarray,
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
  confusion = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {
      'loss': float(-log_probs[np.arange(len(labels)), labels].mean()),
      'accuracy': float((predictions == labels).mean()),
      'num_examples': int(len(labels)),
      'per_class_accuracy': [float(a) for a in per_class],
      'confusion_matrix': confusion.tolist(),
  }


class MetricsWriter:
  """Per-epoch metrics as JSON lines and TensorBoard events in the workdir.

  `metrics.jsonl` is rewritten whole at each epoch (object stores cannot
  append; a resumed run keeps the lines already there). TensorBoard events
  for a remote workdir are written locally and copied there after each
  epoch.
  """

  def __init__(self, workdir: epath.Path):
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._jsonl = workdir / 'metrics.jsonl'
    self._lines = (self._jsonl.read_text().splitlines()
                   if self._jsonl.exists() else [])
    self._tb_dir = workdir / 'tensorboard'
    self._local_tb = (tempfile.mkdtemp(prefix='digits_jax_tb_')
                      if paths.is_remote(workdir) else None)
    self._tb = SummaryWriter(self._local_tb or os.fspath(self._tb_dir))

  def write(self, step: int, metrics: dict) -> None:
    self._lines.append(json.dumps({'step': step, **metrics}))
    paths.write_atomically(self._jsonl, '\n'.join(self._lines) + '\n')
    for name, value in metrics.items():
      if isinstance(value, (int, float)):
        self._tb.add_scalar(name, value, step)
    self._tb.flush()
    self._copy_events()

  def _copy_events(self) -> None:
    if self._local_tb:
      self._tb_dir.mkdir(parents=True, exist_ok=True)
      for name in os.listdir(self._local_tb):
        with open(os.path.join(self._local_tb, name), 'rb') as f:
          (self._tb_dir / name).write_bytes(f.read())

  def close(self) -> None:
    self._tb.close()
    self._copy_events()
    if self._local_tb:
      shutil.rmtree(self._local_tb, ignore_errors=True)


class TrainingDiverged(Exception):
  """The loss became NaN or infinite."""


class StopSignal:
  """Turns SIGTERM (and, on one host, SIGINT) into a request to stop cleanly.

  The loop polls it once per dispatch; when it says stop, the loop writes a
  checkpoint and returns, and rerunning the same command resumes from it.

  One process: a Python handler records the first SIGTERM or SIGINT (a
  second one acts as usual).

  Several processes: every host must save the same step, or the collective
  save waits forever. JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM on whichever host gets it
  and tells the others; each host then reports the last counter it passed
  to `multihost_utils.reached_preemption_sync_point`, and the sync point is
  one above the largest, answered True for exactly that value. Orbax's save
  asks the same sync point with the training step, so the counter here is
  the training step too, and every step a dispatch covered is offered in
  turn: whenever the notice comes (mid-epoch, during validation or a save),
  all hosts stop after the same dispatch, the first to pass the sync point.
  No Python SIGTERM handler is installed then: it would take the signal away
  from JAX's. SIGINT keeps its default (it usually reaches a single host).
  """

  def __init__(self, step: int):
    """`step`: the training step the run starts (or resumes) at."""
    self.received = None
    self._multihost = jax.process_count() > 1
    self._offered_step = step
    self._previous = {}
    signals = () if self._multihost else (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    logging.warning('%s received: stopping after the current steps.',
                    self.received)
    self.restore()

  def poll(self, step: int) -> bool:
    """Whether to stop now, at training step `step`; called after every
    dispatch, on every host."""
    if self._multihost and self.received is None:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      for offered in range(self._offered_step + 1, step + 1):
        if multihost_utils.reached_preemption_sync_point(offered):
          self.received = 'SIGTERM'
          logging.warning('Preemption notice (SIGTERM on some host): all '
                          'hosts stop at step %d.', step)
          break
      self._offered_step = step
    return self.received is not None

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


def build(config, splits_or_meta, axis_name=None, total_steps: int = 0,
          platform: platform_lib.Platform | None = None):
  """Model, optimizer and preprocessing as the config says, for `platform`
  (default: this process's).

  `total_steps` sets the length of a step-driven LR schedule; evaluation
  leaves it out (only the optimizer state's structure matters there).
  """
  platform = platform or platform_lib.current(config.conv_impl)
  dtype = jnp.dtype(config.compute_dtype)
  extra = ({'dropout_rate': config.dropout_rate}
           if config.model == 'improved_lenet' else {})
  model = models.create_model(
      config.model, dtype=dtype, axis_name=axis_name,
      cpu_weight_gradients=platform.cpu_weight_gradients, **extra)
  tx = optim.create_optimizer(config, models.L2_REGULARIZED, total_steps)
  preprocess = Preprocess(
      input_size=config.input_size,
      pixel_mean=splits_or_meta['pixel_mean'],
      pixel_std=splits_or_meta['pixel_std'],
      rotation_degrees=config.rotation_degrees,
      zoom_range=config.zoom_range, shift_range=config.shift_range)
  return model, tx, preprocess


def _checkpoint_meta(config, preprocess: Preprocess, epoch: int) -> dict:
  return {'model': config.model, 'input_size': config.input_size,
          'pixel_mean': preprocess.pixel_mean,
          'pixel_std': preprocess.pixel_std, 'epoch': epoch,
          'config': json.loads(config.to_json())}


def train_and_evaluate(config, workdir: str,
                       platform: platform_lib.Platform | None = None) -> dict:
  """Trains as the config says, resuming from `workdir`; returns the test
  report of the best checkpoint. `platform` (default: this process's) makes
  the platform's choices; tests pass another to run its path here."""
  workdir = paths.resolve(os.fspath(workdir))
  platform = platform or platform_lib.current(config.conv_impl)
  devices = parallel_lib.create(config)
  splits = input_pipeline.load_splits(config)
  data_stats = {'pixel_mean': splits.pixel_mean, 'pixel_std': splits.pixel_std}
  num_train = len(splits.train_images)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f'config.batch_size={config.batch_size} is larger than '
                    f'the {num_train} training images; lower it')
  total_steps = steps_per_epoch * config.num_epochs
  if config.num_train_steps > 0:
    total_steps = min(total_steps, config.num_train_steps)
  model, tx, preprocess = build(config, data_stats, devices.axis_name,
                                total_steps, platform)

  key = jax.random.key(config.seed)
  init_key, shuffle_key, train_key = jax.random.split(key, 3)
  state = create_train_state(model, tx, init_key, config.input_size)
  counts = parameter_counts(state)
  logging.info('Model %s: %d trainable parameters, %d BatchNorm statistics. '
               '%d %s device(s), parallelism %s.', config.model,
               counts['trainable'], counts['batch_stats'], devices.num_devices,
               jax.default_backend(), devices.mode)

  manager = checkpoint.create_manager(workdir / 'checkpoints',
                                      config.checkpoints_to_keep)
  if manager.latest_step() is not None:
    step = manager.latest_step()
    checkpoint.check_compatible(checkpoint.read_meta(manager, step), config,
                                workdir)
    # Restored straight onto this run's devices, whatever wrote it.
    state = checkpoint.restore_state(
        manager, step, state if devices.mode == 'pmap' else
        devices.replicate(state))
    logging.info('Resuming from the checkpoint at step %d in %s.', step,
                 workdir)

  steps_per_dispatch = platform.steps_per_dispatch(config.steps_per_dispatch,
                                                  steps_per_epoch)

  step_fn = functools.partial(train_step, model=model, tx=tx,
                              preprocess=preprocess,
                              augment_images=config.augment,
                              axis_name=devices.axis_name)
  unroll = platform.unroll_scan
  options = platform.compiler_options
  if devices.host_fed:
    train_chunk = devices.compile_host_fed(functools.partial(
        scan_train_batches, step_fn, unroll=unroll), options)
  else:
    train_chunk = devices.compile(functools.partial(
        scan_train_steps, step_fn, unroll=unroll), options)
  # Evaluation runs on one device of each host, outside pmap: the same
  # model without the axis name.
  evaluator = Evaluator(model.clone(axis_name=None), preprocess,
                        config.eval_batch_size, options)
  state = devices.replicate(state)
  if not devices.host_fed:
    train_images = devices.replicate(splits.train_images)
    train_labels = devices.replicate(splits.train_labels)

  def run_steps(state, batch_indices):
    if devices.host_fed:
      return train_chunk(state, devices.assemble_batches(
          splits.train_images, splits.train_labels, batch_indices), train_key)
    return train_chunk(state, train_images, train_labels,
                       devices.shard_batch_indices(batch_indices), train_key)

  writer = MetricsWriter(workdir) if jax.process_index() == 0 else None
  step = int(devices.unreplicate(state).step)
  stop_signal = StopSignal(step)
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch
      epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
      batches = epoch_batches(shuffle_key, epoch, num_train, config.batch_size)
      train_metrics = []
      start = time.perf_counter()
      images_done = 0
      progress = _progress_bar(epoch, config.num_epochs,
                               epoch_end - epoch * steps_per_epoch,
                               step - epoch * steps_per_epoch)
      while step < epoch_end:
        offset = step - epoch * steps_per_epoch
        count = min(steps_per_dispatch, epoch_end - step)
        state, metrics = run_steps(state, batches[offset:offset + count])
        # One host sync per dispatch.
        metrics = devices.metrics_to_host(metrics)
        if not np.isfinite(metrics['loss']).all():
          bad = step + int(np.argmin(np.isfinite(metrics['loss'])))
          raise TrainingDiverged(
              f'the training loss became non-finite at step {bad}; nothing '
              f'was saved after it, the last good checkpoint is step '
              f'{manager.latest_step()}; lower config.learning_rate and rerun')
        train_metrics.append(metrics)
        step += count
        images_done += count * config.batch_size
        progress.update(count)
        progress.set_postfix(loss=f'{metrics["loss"].mean():.4f}')
        every = config.log_every_steps
        if every and step // every > (step - count) // every:
          logging.info('step %d: train loss %.4f', step,
                       float(metrics['loss'].mean()))
        if stop_signal.poll(step) and step < epoch_end:
          break
      progress.close()
      if stop_signal.received and step < epoch_end:
        # Mid-epoch: save where we are, without validation metrics (the
        # epoch's evaluation and plateau update happen when it completes).
        checkpoint.save(manager, step, devices.unreplicate(state),
                        _checkpoint_meta(config, preprocess, epoch), None)
        logging.info('Stopped by %s at step %d (epoch %d); saved a '
                     'checkpoint. Run the same command to resume.',
                     stop_signal.received, step, epoch + 1)
        return {'interrupted_at_step': step}
      elapsed = time.perf_counter() - start

      val = evaluator.evaluate(devices.unreplicate(state), splits.val_images,
                               splits.val_labels)
      # The rate this epoch ended with (the plateau's, before its update).
      learning_rate = optim.current_learning_rate(
          devices.unreplicate(state.opt_state), step - 1, config, total_steps)
      state = state.replace(opt_state=optim.report_epoch(
          state.opt_state, val['loss'], config))
      summary = {
          'epoch': epoch + 1,
          'train_loss': float(np.concatenate(
              [m['loss'] for m in train_metrics]).mean()),
          'train_accuracy': float(np.concatenate(
              [m['accuracy'] for m in train_metrics]).mean()),
          'val_loss': val['loss'], 'val_accuracy': val['accuracy'],
          'learning_rate': learning_rate,
          'images_per_sec': images_done / elapsed,
          'epoch_seconds': elapsed,
      }
      logging.info(
          'epoch %d/%d step %d: train loss %.4f acc %.4f | val loss %.4f acc '
          '%.4f | lr %.2e | %.0f images/s', epoch + 1, config.num_epochs,
          step, summary['train_loss'], summary['train_accuracy'],
          summary['val_loss'], summary['val_accuracy'], learning_rate,
          summary['images_per_sec'])
      if writer:
        writer.write(step, summary)
      checkpoint.save(manager, step, devices.unreplicate(state),
                      _checkpoint_meta(config, preprocess, epoch + 1),
                      {'val_accuracy': val['accuracy'],
                       'val_loss': val['loss']})
      if stop_signal.received:
        logging.info('Stopped by %s after epoch %d; saved a checkpoint. Run '
                     'the same command to resume.', stop_signal.received,
                     epoch + 1)
        return {'interrupted_at_step': step}
  finally:
    if writer:
      writer.close()
    stop_signal.restore()

  return evaluate_checkpoint(config, workdir, splits=splits)


def _progress_bar(epoch, num_epochs, total, initial):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit='step', leave=False,
                   desc=f'epoch {epoch + 1}/{num_epochs}', disable=None)


@dataclasses.dataclass(frozen=True)
class Restored:
  state: TrainState
  model: Any
  preprocess: Preprocess
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
  model, tx, preprocess = build(config, meta)
  target = create_train_state(model, tx, jax.random.key(0), config.input_size)
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
    logging.info('Wrote %s.', ', '.join(written))
  logging.info('Test set (%d images), best checkpoint (step %d, epoch %s): '
               'accuracy %.4f, loss %.4f', report['num_examples'],
               restored.step, restored.meta.get('epoch'), report['accuracy'],
               report['loss'])
  return report
