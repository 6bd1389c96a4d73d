"""The training loop: epochs of compiled dispatches, validation, checkpoints.

`build_program` makes the compiled program: the pure train step (steps.py,
bound by recipe.py) over the run's members (members.py), scanned over a
dispatch's steps, jitted over the device mesh with its shardings and the
state donated (or pmapped). Each dispatch runs `steps_per_dispatch` steps
over the dataset held on the devices and hands metrics back once; each
epoch ends with validation, the plateau rule's update, a metrics line and a
checkpoint. A signal stops it cleanly (interruption.py); rerunning resumes
bit for bit.
"""

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, NamedTuple

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
from digits_jax import reports
from digits_jax import run_lock
from digits_jax import steps
from digits_jax import sweep
from digits_jax.errors import ProcessLost
from digits_jax.errors import UserError
from digits_jax.errors import WriteFailed

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
    self._jsonl = workdir / reports.METRICS
    self._lines = self._good_lines(workdir)
    self._tb_dir = workdir / 'tensorboard'
    self._local_tb = (tempfile.mkdtemp(prefix='digits_jax_tb_')
                      if paths.is_remote(workdir) else None)
    with self._writing_events():
      self._tb = SummaryWriter(self._local_tb or os.fspath(self._tb_dir))

  def _good_lines(self, workdir: epath.Path) -> list[str]:
    """The lines already there that are records; damaged ones (a copy cut
    off mid-line) are moved to metrics.jsonl.damaged with one warning."""
    if not self._jsonl.exists():
      return []
    text = self._jsonl.read_text()
    records, damaged = reports.parse_metrics(text)
    if damaged:
      aside = workdir / reports.DAMAGED_METRICS
      kept = aside.read_text() if aside.exists() else ''
      lines = text.splitlines()
      paths.write_atomically(aside, kept + ''.join(
          lines[n - 1] + '\n' for n in damaged), what='the damaged metrics')
      log.warning(reports.damaged_lines_warning(
          self._jsonl, damaged, f'moved to {aside.name}'))
    return [line for line, _ in records]

  def _writing_events(self):
    return paths.writing('the TensorBoard events', self._tb_dir)

  def write(self, step: int, metrics: dict) -> None:
    self._lines.append(json.dumps({'step': step, **metrics}))
    paths.write_atomically(self._jsonl, '\n'.join(self._lines) + '\n',
                           what='the metrics')
    with self._writing_events():
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
          paths.write_atomically(self._tb_dir / name, f.read(),
                                 what='the TensorBoard events')

  def close(self, quietly: bool = False) -> None:
    """`quietly`: a run already failing, whose one line is said; what the
    events could not flush then is not another."""
    try:
      with self._writing_events():
        self._tb.close()
        self._copy_events()
    except WriteFailed:
      if not quietly:
        raise
    finally:
      if self._local_tb:
        shutil.rmtree(self._local_tb, ignore_errors=True)


class Program(NamedTuple):
  """A run's training program and what it is made of (`build_program`)."""
  model: Any  # models.create's.
  tx: Any
  preprocess: steps.Preprocess
  # The dispatch as a pure function, (state, images, labels, batch_indices,
  # key) -> (state, metrics): what `update` compiles.
  train_steps: Callable
  # `train_steps` jitted over the mesh with its shardings, the state
  # donated (or pmapped): what the training loop calls.
  update: Callable

  def init_state(self, members: members_lib.Members, init_key):
    """The members' initial train state (on the default device)."""
    return members.create_train_state(self.model, self.tx, init_key)


def build_program(config, members: members_lib.Members,
                  devices: parallel_lib.DataParallel,
                  platform: platform_lib.Platform, data: dict,
                  total_steps: int = 0) -> Program:
  """The training program, one on one host or many; the one constructor
  that training, the benchmark, the TPU compile and the tests use:

    update(state, images, labels, batch_indices, key) -> (state, metrics)

  the dataset held on the devices, `batch_indices` [K steps, (members,) B],
  the metrics [K] or [K, members]. The step is `steps.train_step` bound to
  the model (for the `data`'s shape, recipe.data_record), the optimizer and
  the preprocessing (recipe.train_step_fn), over the members (vmapped or
  side by side, as the platform says), scanned over the K steps (unrolled
  where the platform says). A sweep's values are in the state (one program
  for all of them); `total_steps` is the one-cycle schedule's length.
  """
  model, tx = recipe.build(config, platform, data, devices.axis_name,
                           total_steps, members.traced_keys)
  preprocess = recipe.preprocessing(config, data)
  step = members.train_step(
      recipe.train_step_fn(config, model, tx, preprocess, devices.axis_name,
                           members.traced_keys),
      platform.vmap_members)
  train_steps = functools.partial(steps.scan_train_steps, step,
                                  unroll=platform.unroll_scan)
  if devices.mode == 'pmap':
    # One program per device, each argument with a leading device axis but
    # the key; `jax.pmap` takes no compiler options (XLA's defaults).
    update = jax.pmap(train_steps, axis_name=devices.axis_name,
                      in_axes=(0, 0, 0, 0, None), donate_argnums=(0,))
  else:
    shardings = devices.shardings
    update = jax.jit(
        train_steps,
        in_shardings=(shardings.state, shardings.replicated,
                      shardings.replicated, shardings.batch_indices,
                      shardings.state),
        out_shardings=(shardings.state, shardings.metrics),
        donate_argnums=(0,), compiler_options=platform.compiler_options)
  return Program(model, tx, preprocess, train_steps, update)


class Schedule(NamedTuple):
  """How a run's steps fall into epochs and dispatches."""
  bag_size: int  # The training images each member trains on.
  steps_per_epoch: int
  total_steps: int
  steps_per_dispatch: int

  def epoch_end(self, epoch: int) -> int:
    """The step after the epoch's last (the run's end for a short one)."""
    return min((epoch + 1) * self.steps_per_epoch, self.total_steps)


def make_schedule(config, members: members_lib.Members,
                  platform: platform_lib.Platform,
                  num_train: int) -> Schedule:
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
  return Schedule(bag_size, steps_per_epoch, total_steps,
                  platform.steps_per_dispatch(config.steps_per_dispatch,
                                              steps_per_epoch,
                                              members.num_models))


def train_and_evaluate(
    config, members: members_lib.Members, workdir: str,
    platform: platform_lib.Platform,
    stop_signal: interruption.StopSignal | None = None) -> dict:
  """Trains as the config says, resuming from `workdir`; returns the test
  report of the best checkpoint. `members`: the run's (members.resolve).
  `platform` makes the platform's choices, for training and the evaluations
  alike (main.py decides it; tests pass another to run its path here).
  `stop_signal`: the handler `main` put in place at its start (default: one
  from here on)."""
  own_stop_signal = stop_signal is None
  stop_signal = stop_signal or interruption.StopSignal()
  workdir = paths.resolve(os.fspath(workdir))
  # One writer per workdir: process 0 holds its lock (run_lock.py).
  lock = (run_lock.held(workdir, stop_signal) if jax.process_index() == 0
          else contextlib.nullcontext())
  try:
    with lock:
      return _train_and_evaluate(config, members, workdir, platform,
                                 stop_signal)
  finally:
    if own_stop_signal:
      stop_signal.close()


@dataclasses.dataclass(frozen=True)
class _Run:
  """What a training run holds fixed from its first dispatch to its last."""
  config: Any
  members: members_lib.Members
  devices: parallel_lib.DataParallel
  schedule: Schedule
  splits: Any
  data: dict  # splits.record(): the data's shape, classes, statistics.
  program: Callable
  evaluator: evaluation.Evaluator
  train_data: tuple  # (images, labels) on the devices.
  shuffle_key: Any
  train_key: Any
  manager: Any
  # The steps of the complete checkpoints, appended to as the run saves:
  # what a run that fails names (a bucket may not answer then).
  saved_steps: list
  # The members whose training diverged (a sweep trains on without them).
  diverged: set
  writer: MetricsWriter | None
  stop_signal: interruption.StopSignal

  def last_saved(self) -> list:
    """`saved_steps`, and on a local disk what is there: a save that
    failed in its last barrier (a process lost) is complete on disk."""
    return sorted(set(self.saved_steps) | set(
        checkpoint.complete_steps(self.manager.directory)))

  def save(self, step: int, state, epoch: int, record: dict | None) -> None:
    checkpoint.save(self.manager, step, self.devices.unreplicate(state),
                    recipe.checkpoint_meta(self.config, self.data,
                                           epoch), record)
    self.saved_steps.append(step)


class TrainingDiverged(Exception):
  """The loss became NaN or infinite, or far worse than a guess's."""


def _train_and_evaluate(config, members, workdir, platform, stop_signal):
  run, state = _start(config, members, workdir, platform, stop_signal)
  failed = True
  try:
    stopped = _train(run, state)
    failed = False
  except WriteFailed as e:
    e.advice = _resume_advice(e, run.last_saved())
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    lost = parallel_lib.lost_process(e)
    if lost is None:
      raise
    raise ProcessLost(f'{lost}; ' + _rerun_advice(
        run.last_saved(), 'restart every process with the same command'
    )) from None
  finally:
    if run.writer:
      run.writer.close(quietly=failed)
    stop_signal.stop_polling()
  if stopped:
    return stopped
  try:
    if members.is_sweep:
      sweep.write_results(config, members.values, workdir,
                          members_lib.rank_by_validation)
    return evaluation.evaluate_checkpoint(config, members, workdir, platform,
                                         splits=run.splits)
  except WriteFailed as e:
    e.advice = ('training is done and its checkpoints are saved; '
                f'{_what_to_do(e)} and run the same command with --mode=eval')
    raise


def _train(run: _Run, state) -> dict | None:
  """The epochs from the state's step to the end: None, or where a signal
  stopped them ({'interrupted_at_step': step})."""
  schedule, stop_signal = run.schedule, run.stop_signal
  step = run.members.step(run.devices.to_host(state.step))
  stop_signal.start_polling(step)
  while step < schedule.total_steps:
    epoch = step // schedule.steps_per_epoch
    state, step, train_metrics = _train_epoch(run, state, step, epoch)
    if stop_signal.received and step < schedule.epoch_end(epoch):
      return _stop_mid_epoch(run, state, step, epoch)
    state = _end_epoch(run, state, step, epoch, train_metrics)
    if stop_signal.received:
      log.info('Stopped by %s after epoch %d; saved a checkpoint. Run '
               'the same command to resume.', stop_signal.received,
               epoch + 1)
      return {'interrupted_at_step': step}
  return None


def _what_to_do(error: WriteFailed) -> str:
  if error.fault.startswith('the disk'):
    return 'free space there'
  if error.fault.startswith('the bucket'):
    return 'check the bucket, the network and the credentials'
  return 'make the folder writable'


def _resume_advice(error: WriteFailed, saved_steps: list) -> str:
  """What a run that could not write can do: where it can resume from."""
  return _rerun_advice(saved_steps,
                       f'{_what_to_do(error)} and rerun the same command')


def _rerun_advice(saved_steps: list, rerun: str) -> str:
  if not saved_steps:
    return f'no checkpoint was saved; {rerun}, which starts afresh'
  return (f'the last complete checkpoint is step {max(saved_steps)}; '
          f'{rerun}, which resumes from it')


def _start(config, members, workdir, platform, stop_signal):
  """(run, state): the devices, data, schedule, model, compiled program and
  checkpoints of a run, and its state restored or initialized, placed."""
  devices = parallel_lib.create(config, members.num_models)
  splits = input_pipeline.load_splits(config)
  schedule = make_schedule(config, members, platform,
                           len(splits.train_images))
  data = splits.record()
  program = build_program(config, members, devices, platform, data,
                          schedule.total_steps)
  init_key, shuffle_key, train_key = members.keys()
  state = program.init_state(members, init_key)
  _log_model(config, members, devices, state)
  state, manager = _restore_or_init(config, workdir, devices, state)
  run = _Run(
      config=config, members=members, devices=devices, schedule=schedule,
      splits=splits, data=data, program=program.update,
      # Validation runs every member on the run's devices, where the state
      # is: the same model, built again without pmap's axis name under
      # pmap.
      evaluator=evaluation.Evaluator(
          program.model if devices.axis_name is None
          else recipe.build(config, platform, data)[0],
          program.preprocess, config.eval_batch_size, platform, devices,
          members),
      train_data=(devices.replicate(splits.train_images),
                  devices.replicate(splits.train_labels)),
      shuffle_key=shuffle_key,
      train_key=(devices.place_state(train_key) if devices.ensemble
                 else train_key),
      manager=manager, saved_steps=list(manager.all_steps()), diverged=set(),
      writer=MetricsWriter(workdir) if jax.process_index() == 0 else None,
      stop_signal=stop_signal)
  return run, devices.place_state(state)


def _log_model(config, members, devices, state) -> None:
  counts = parameter_counts(state, members.num_models)
  log.info('Model %s%s: %d trainable parameters, %d BatchNorm statistics%s. '
           '%d %s device(s), parallelism %s%s.', config.model,
           f' x{members.num_models}' if members.stacked else '',
           counts['trainable'], counts['batch_stats'],
           ' each' if members.stacked else '', devices.num_devices,
           jax.default_backend(), devices.mode,
           f', {devices.member_devices} on the members' if devices.ensemble
           else '')


def _restore_or_init(config, workdir, devices, state):
  """(state, checkpoint manager): the newest checkpoint in `workdir` that
  restores, straight onto this run's devices whatever wrote it (damaged
  ones set aside), or `state` where there is none."""
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

  resumed = checkpoint.restore_first(
      manager, sorted(manager.all_steps(), reverse=True),
      state if devices.mode == 'pmap' else devices.place_state(state),
      checkpoints, check=resumable)
  if not resumed:
    return state, manager
  step, _, state, damaged = resumed
  if damaged:
    manager.close()
    checkpoint.set_aside(checkpoints, aside, damaged, 'they do not restore')
    manager = checkpoint.create_manager(checkpoints,
                                        config.checkpoints_to_keep)
  log.info('Resuming from the checkpoint at step %d in %s.', step, workdir)
  return state, manager


def _dispatch(run: _Run, state, batch_indices):
  """One compiled dispatch over the rows of `batch_indices`."""
  images, labels = run.train_data
  return run.program(state, images, labels,
                     run.devices.shard_batch_indices(batch_indices),
                     run.train_key)


def _train_epoch(run: _Run, state, step: int, epoch: int):
  """The epoch's dispatches from `step` to its end (or to a stop):
  (state, step, each dispatch's metrics and timing)."""
  config, schedule = run.config, run.schedule
  first, epoch_end = epoch * schedule.steps_per_epoch, schedule.epoch_end(epoch)
  batches = run.members.epoch_batches(
      run.shuffle_key, epoch, len(run.splits.train_images), config.batch_size,
      schedule.bag_size)
  train_metrics = {'dispatches': [], 'images': 0,
                   'start': time.perf_counter()}
  progress = _progress_bar(epoch, config.num_epochs, epoch_end - first,
                           step - first)
  while step < epoch_end:
    count = min(schedule.steps_per_dispatch, epoch_end - step)
    state, metrics = _dispatch(run, state,
                               batches[step - first:step - first + count])
    # One host sync per dispatch.
    metrics = run.devices.to_host(metrics)
    check_diverged(metrics['loss'], step, run.members, run.diverged,
                   run.last_saved, run.data['num_classes'])
    train_metrics['dispatches'].append(metrics)
    step += count
    train_metrics['images'] += count * config.batch_size
    progress.update(count)
    progress.set_postfix(loss=f'{metrics["loss"].mean():.4f}')
    every = config.log_every_steps
    if every and step // every > (step - count) // every:
      log.info('step %d: train loss %.4f', step,
               float(metrics['loss'].mean()))
    if run.stop_signal.poll(step) and step < epoch_end:
      break
  progress.close()
  train_metrics['seconds'] = time.perf_counter() - train_metrics['start']
  return state, step, train_metrics


# A dispatch whose mean training loss is above this many times a uniform
# guess's (ln of the number of classes: 2.30 for 10) has diverged: a run
# that learns starts near ln C and goes down, and even a bad step's loss
# averages out over a dispatch. A rate far too high (1e4) keeps the loss
# finite at 1e11 while the accuracy sits at chance.
DIVERGED_LOSS_FACTOR = 10.0


def check_diverged(losses, step: int, members: members_lib.Members,
                   diverged: set, last_saved: Callable[[], list],
                   num_classes: int) -> None:
  """Raises TrainingDiverged when the dispatch's training loss `losses`
  ([steps] or [steps, members], from training step `step`) is not finite,
  or its mean is far worse than a uniform guess's. A sweep goes on while
  some of its members learn: each that diverges is named once (added to
  `diverged`) and ranks last on validation. `last_saved()`: the complete
  checkpoints' steps, for the message; `num_classes`: the data's, whose
  log is a uniform guess's loss."""
  losses = np.asarray(losses, np.float64).reshape(len(losses), -1)
  finite = np.isfinite(losses).all(1)
  if not finite.all():
    bad = step + int(np.argmin(finite))
    raise TrainingDiverged(
        f'the training loss became non-finite at step {bad}; nothing '
        f'was saved after it, {_last_checkpoint(last_saved())}; lower '
        'config.learning_rate and rerun in a new --workdir')
  uniform_loss = np.log(num_classes)
  limit = DIVERGED_LOSS_FACTOR * uniform_loss
  means = losses.mean(0)
  newly = [j for j in np.flatnonzero(means > limit) if j not in diverged]
  if not newly:
    return
  diverged.update(int(j) for j in newly)
  if members.is_sweep and len(diverged) < members.num_models:
    for j in newly:
      log.warning('Member %d (%s) diverged: its training loss averaged %.3g '
                  'over steps %d-%d (a uniform guess scores %.2f); the '
                  'others train on.', j, members.describe(j), means[j], step,
                  step + len(losses) - 1, uniform_loss)
    return
  raise TrainingDiverged(
      f'the training diverged: its loss averaged {means.max():.3g} over '
      f'steps {step}-{step + len(losses) - 1}, over {DIVERGED_LOSS_FACTOR:g} '
      f'times a uniform guess\'s ({uniform_loss:.2f}); '
      f'{_last_checkpoint(last_saved())}; lower config.learning_rate and '
      'rerun in a new --workdir')


def _last_checkpoint(saved_steps: list) -> str:
  return (f'the last checkpoint is step {max(saved_steps)}' if saved_steps
          else 'no checkpoint was saved')


def _stop_mid_epoch(run: _Run, state, step: int, epoch: int) -> dict:
  """Saves where a stopped run is, without validation metrics (the epoch's
  evaluation and plateau update happen when it completes)."""
  run.save(step, state, epoch, None)
  log.info('Stopped by %s at step %d (epoch %d); saved a checkpoint. Run '
           'the same command to resume.', run.stop_signal.received, step,
           epoch + 1)
  return {'interrupted_at_step': step}


def _end_epoch(run: _Run, state, step: int, epoch: int, train_metrics):
  """Validation, each member's plateau, the metrics line and record, and
  the epoch's checkpoint; returns the state with the plateau updated."""
  config, members = run.config, run.members
  val = evaluation.ensemble_report(
      run.evaluator.member_logits(state, run.splits.val_images),
      run.splits.val_labels)
  member_val = val.get('members', [val])
  losses = [m['loss'] for m in member_val]
  # The rate each member ended this epoch with (the plateau's, before its
  # update).
  member_rates = members.current_learning_rates(
      run.devices.to_host(state.opt_state), step - 1, config,
      run.schedule.total_steps)
  state = state.replace(opt_state=members.report_epoch(
      state.opt_state, losses, config))
  summary = _epoch_summary(run, epoch, train_metrics, val, member_val,
                           member_rates)
  _log_epoch(run, step, summary)
  # A sweep's checkpoint is as good as its best member (predict and export
  # take that member); an ensemble's, the ensemble.
  chosen = val
  if members.is_sweep:
    best = members_lib.rank_by_validation(
        [m['accuracy'] for m in member_val], losses)[0]
    log.info('  best member %d (%s): val loss %.4f acc %.4f', best,
             members.describe(best), losses[best],
             member_val[best]['accuracy'])
    chosen = member_val[best]
  if run.writer:
    run.writer.write(step, summary)
  record = {'val_accuracy': chosen['accuracy'], 'val_loss': chosen['loss']}
  if members.stacked:
    # Whence --member=best.
    record.update({'member_val_accuracy': summary['member_val_accuracy'],
                   'member_val_loss': losses})
  run.save(step, state, epoch + 1, record)
  return state


def _epoch_summary(run: _Run, epoch: int, train_metrics, val, member_val,
                   member_rates) -> dict:
  """The epoch's line of metrics.jsonl."""
  dispatches = train_metrics['dispatches']
  summary = {
      'epoch': epoch + 1,
      'train_loss': float(np.concatenate(
          [m['loss'] for m in dispatches]).mean()),
      'train_accuracy': float(np.concatenate(
          [m['accuracy'] for m in dispatches]).mean()),
      'val_loss': val['loss'], 'val_accuracy': val['accuracy'],
      'learning_rate': float(np.mean(member_rates)),
      'images_per_sec': train_metrics['images'] / train_metrics['seconds'],
      'epoch_seconds': train_metrics['seconds'],
  }
  if run.members.stacked or run.members.is_sweep:
    # The ensemble's validation above; each member's here.
    summary.update({
        'member_val_accuracy': [m['accuracy'] for m in member_val],
        'member_val_loss': [m['loss'] for m in member_val],
        'member_learning_rate': member_rates})
  return summary


def _log_epoch(run: _Run, step: int, summary: dict) -> None:
  members = run.members
  log.info(
      'epoch %d/%d step %d: train loss %.4f acc %.4f | val loss %.4f acc '
      '%.4f%s | lr %.2e | %.0f images/s%s', summary['epoch'],
      run.config.num_epochs, step, summary['train_loss'],
      summary['train_accuracy'], summary['val_loss'], summary['val_accuracy'],
      ' (averaged weights)' if members.ema else '', summary['learning_rate'],
      summary['images_per_sec'] * members.num_models,
      ' (all members)' if members.stacked else '')


def _progress_bar(epoch, num_epochs, total, initial):
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit='step', leave=False,
                   desc=f'epoch {epoch + 1}/{num_epochs}', disable=None)
