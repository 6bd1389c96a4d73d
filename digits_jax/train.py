"""The training loop: epochs of compiled dispatches, validation, checkpoints.

Each dispatch runs `steps_per_dispatch` train steps (steps.py) over the
dataset held on the device and hands metrics back once; each epoch ends with
validation, the plateau rule's update, a metrics line and a checkpoint. A
signal stops it cleanly (interruption.py); rerunning resumes bit for bit.
"""

import contextlib
import functools
import json
import logging
import os
import shutil
import tempfile
import time

from etils import epath
import jax
import numpy as np

from digits_jax import checkpoint
from digits_jax import evaluation
from digits_jax import input_pipeline
from digits_jax import interruption
from digits_jax import members as members_lib
from digits_jax import parallel as parallel_lib
from digits_jax import paths
from digits_jax import platform as platform_lib
from digits_jax import recipe
from digits_jax import run_lock
from digits_jax import steps
from digits_jax import sweep
from digits_jax.errors import UserError

log = logging.getLogger(__name__)


def parameter_counts(state: steps.TrainState, num_models: int = 1) -> dict:
  """Per model (an ensemble's state holds `num_models` of each)."""
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return {'trainable': count(state.params) // num_models,
          'batch_stats': count(state.batch_stats) // num_models}


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


def train_program(config, model, tx, preprocess: steps.Preprocess,
                  members: members_lib.Members,
                  devices: parallel_lib.DataParallel,
                  platform: platform_lib.Platform, total_steps: int = 0):
  """The compiled training dispatch, built in this one place.

  `steps.train_step` bound to the model, optimizer and preprocessing
  (recipe.train_step_fn), over the ensemble's member axis (`members`),
  scanned over a dispatch's steps (unrolled where the platform says), then
  jitted over `devices`' mesh with their shardings, the state donated and
  the platform's compiler options (or pmapped: parallel.py). Called as

    program(state, images, labels, batch_indices, key)  # the dataset on
                                                        # the devices
    program(state, batches, key)                        # host-fed batches

  and returns (state, metrics), the metrics [steps] or [steps, members].
  A sweep's values are in the state (one program for all of them);
  `total_steps` is the one-cycle schedule's length, as the optimizer's.
  """
  step = members.train_step(
      recipe.train_step_fn(config, model, tx, preprocess, devices.axis_name,
                           total_steps, members.traced_keys),
      platform.vmap_members)
  unroll = platform.unroll_scan
  if devices.host_fed:
    scan = functools.partial(steps.scan_train_batches, step, unroll=unroll)
    return devices.compile_host_fed(scan, platform.compiler_options)
  scan = functools.partial(steps.scan_train_steps, step, unroll=unroll)
  return devices.compile(scan, platform.compiler_options)


def train_and_evaluate(
    config, members: members_lib.Members, workdir: str,
    platform: platform_lib.Platform,
    stop_signal: interruption.StopSignal | None = None) -> dict:
  """Trains as the config says, resuming from `workdir`; returns the test
  report of the best checkpoint. `members`: the run's (members.resolve).
  `platform` makes the platform's choices,
  for training and the evaluations alike (main.py decides it; tests pass
  another to run its path here).
  `stop_signal`: the handler `main` put in place at its start (default: one
  from here on)."""
  own_stop_signal = stop_signal is None
  stop_signal = stop_signal or interruption.StopSignal()
  workdir = paths.resolve(os.fspath(workdir))
  # One writer per workdir: process 0 holds its lock (run_lock.py).
  lock = (run_lock.held(workdir) if jax.process_index() == 0
          else contextlib.nullcontext())
  try:
    with lock:
      return _train_and_evaluate(config, members, workdir, platform,
                                 stop_signal)
  finally:
    if own_stop_signal:
      stop_signal.restore()


def _train_and_evaluate(config, members, workdir, platform, stop_signal):
  devices = parallel_lib.create(config)
  splits = input_pipeline.load_splits(config)
  data_stats = {'pixel_mean': splits.pixel_mean, 'pixel_std': splits.pixel_std}
  num_train = len(splits.train_images)
  # Each run (each ensemble member) trains on its own bag of the training
  # split; all of it by default.
  bag_size = round(config.bag_fraction * num_train)
  steps_per_epoch = bag_size // config.batch_size
  if steps_per_epoch == 0:
    raise UserError(f'config.batch_size={config.batch_size} is larger than '
                    f'the {bag_size} training images of each run; lower it')
  total_steps = steps_per_epoch * config.num_epochs
  if config.num_train_steps > 0:
    total_steps = min(total_steps, config.num_train_steps)
  model, tx = recipe.build(config, platform, devices.axis_name, total_steps,
                           members.traced_keys)
  preprocess = recipe.preprocessing(config, data_stats)

  init_key, shuffle_key, train_key = members.keys()
  state = members.create_train_state(model, tx, init_key, config.input_size)
  counts = parameter_counts(state, members.num_models)
  log.info('Model %s%s: %d trainable parameters, %d BatchNorm statistics%s. '
           '%d %s device(s), parallelism %s%s.', config.model,
           f' x{members.num_models}' if members.stacked else '',
           counts['trainable'], counts['batch_stats'],
           ' each' if members.stacked else '', devices.num_devices,
           jax.default_backend(), devices.mode,
           f', {devices.member_devices} on the members' if devices.ensemble
           else '')

  checkpoints = workdir / 'checkpoints'
  aside = workdir / 'damaged_checkpoints'
  unreadable = checkpoint.steps_with_unreadable_metrics(checkpoints)
  if unreadable:
    checkpoint.set_aside(checkpoints, aside, unreadable,
                         'their metrics files do not read')
  manager = checkpoint.create_manager(checkpoints, config.checkpoints_to_keep)

  def resumable(meta):
    checkpoint.check_compatible(meta, config, workdir)
    checkpoint.check_same_recipe(meta, config, workdir)

  # Restored straight onto this run's devices, whatever wrote it; the
  # newest checkpoint that restores, passing over damaged ones.
  resumed = checkpoint.restore_first(
      manager, sorted(manager.all_steps(), reverse=True),
      state if devices.mode == 'pmap' else devices.place_state(state),
      checkpoints, check=resumable)
  if resumed:
    step, _, state, damaged = resumed
    if damaged:
      manager.close()
      checkpoint.set_aside(checkpoints, aside, damaged, 'they do not restore')
      manager = checkpoint.create_manager(checkpoints,
                                          config.checkpoints_to_keep)
    log.info('Resuming from the checkpoint at step %d in %s.', step,
             workdir)

  steps_per_dispatch = platform.steps_per_dispatch(
      config.steps_per_dispatch, steps_per_epoch, members.num_models)

  train_chunk = train_program(config, model, tx, preprocess, members,
                              devices, platform, total_steps)
  # Evaluation runs on one device of each host, outside pmap: the same
  # model without the axis name.
  evaluator = evaluation.Evaluator(model.clone(axis_name=None), preprocess,
                                   config.eval_batch_size,
                                   platform.compiler_options)
  state = devices.place_state(state)
  if devices.ensemble:
    train_key = devices.place_state(train_key)
  if not devices.host_fed:
    train_images = devices.replicate(splits.train_images)
    train_labels = devices.replicate(splits.train_labels)

  def run_steps(state, batch_indices):
    if devices.host_fed:
      return train_chunk(state, devices.assemble_batches(
          splits.train_images, splits.train_labels, batch_indices), train_key)
    return train_chunk(state, train_images, train_labels,
                       devices.shard_batch_indices(batch_indices), train_key)

  is_sweep = members.is_sweep
  writer = MetricsWriter(workdir) if jax.process_index() == 0 else None
  step = members.step(devices.to_host(state.step))
  stop_signal.start_polling(step)
  try:
    while step < total_steps:
      epoch = step // steps_per_epoch
      epoch_end = min((epoch + 1) * steps_per_epoch, total_steps)
      batches = members.epoch_batches(shuffle_key, epoch, num_train,
                                      config.batch_size, bag_size)
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
        metrics = devices.to_host(metrics)
        # Per step (an ensemble's metrics are [steps, members]).
        finite = np.isfinite(metrics['loss']).reshape(count, -1).all(1)
        if not finite.all():
          bad = step + int(np.argmin(finite))
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
          log.info('step %d: train loss %.4f', step,
                   float(metrics['loss'].mean()))
        if stop_signal.poll(step) and step < epoch_end:
          break
      progress.close()
      if stop_signal.received and step < epoch_end:
        # Mid-epoch: save where we are, without validation metrics (the
        # epoch's evaluation and plateau update happen when it completes).
        checkpoint.save(manager, step, devices.unreplicate(state),
                        recipe.checkpoint_meta(config, preprocess, epoch), None)
        log.info('Stopped by %s at step %d (epoch %d); saved a '
                 'checkpoint. Run the same command to resume.',
                 stop_signal.received, step, epoch + 1)
        return {'interrupted_at_step': step}
      elapsed = time.perf_counter() - start

      host_state = devices.to_host(state)
      val = evaluation.ensemble_report(
          evaluator.member_logits(host_state, splits.val_images, members),
          splits.val_labels)
      member_val = val.get('members', [val])
      # The rate each member ended this epoch with (the plateau's, before
      # its update).
      member_rates = members.current_learning_rates(
          host_state.opt_state, step - 1, config, total_steps)
      learning_rate = float(np.mean(member_rates))
      losses = [m['loss'] for m in member_val]
      state = state.replace(opt_state=members.report_epoch(
          state.opt_state, losses, config))
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
      if members.stacked or is_sweep:
        # The ensemble's validation above; each member's here.
        summary.update({
            'member_val_accuracy': [m['accuracy'] for m in member_val],
            'member_val_loss': losses,
            'member_learning_rate': member_rates})
      log.info(
          'epoch %d/%d step %d: train loss %.4f acc %.4f | val loss %.4f acc '
          '%.4f%s | lr %.2e | %.0f images/s%s', epoch + 1, config.num_epochs,
          step, summary['train_loss'], summary['train_accuracy'],
          summary['val_loss'], summary['val_accuracy'],
          ' (averaged weights)' if members.ema else '', learning_rate,
          summary['images_per_sec'] * members.num_models,
          ' (all members)' if members.stacked else '')
      if is_sweep:
        best = members_lib.rank_by_validation(
            [m['accuracy'] for m in member_val], losses)[0]
        log.info('  best member %d (%s): val loss %.4f acc %.4f', best,
                 members.describe(best),
                 losses[best], member_val[best]['accuracy'])
      if writer:
        writer.write(step, summary)
      # A sweep's checkpoint is as good as its best member (predict and
      # export take that member); an ensemble's, the ensemble.
      chosen = member_val[best] if is_sweep else val
      record = {'val_accuracy': chosen['accuracy'], 'val_loss': chosen['loss']}
      if members.stacked:
        # Whence --member=best.
        record.update({'member_val_accuracy': summary['member_val_accuracy'],
                       'member_val_loss': losses})
      checkpoint.save(manager, step, devices.unreplicate(state),
                      recipe.checkpoint_meta(config, preprocess, epoch + 1),
                      record)
      if stop_signal.received:
        log.info('Stopped by %s after epoch %d; saved a checkpoint. Run '
                 'the same command to resume.', stop_signal.received,
                 epoch + 1)
        return {'interrupted_at_step': step}
  finally:
    if writer:
      writer.close()
    stop_signal.stop_polling()

  if is_sweep:
    sweep.write_results(config, members.values, workdir,
                        members_lib.rank_by_validation)
  return evaluation.evaluate_checkpoint(config, members, workdir, platform,
                                       splits=splits)


def _progress_bar(epoch, num_epochs, total, initial):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit='step', leave=False,
                   desc=f'epoch {epoch + 1}/{num_epochs}', disable=None)
