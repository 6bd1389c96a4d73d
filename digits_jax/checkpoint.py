"""Checkpoints with orbax: the latest few and the best by validation accuracy.

Orbax writes each step into a temporary directory and renames it into place
when complete, so a crash mid-write leaves the previous checkpoints intact.
Each checkpoint holds the train state (parameters, BatchNorm statistics,
optimizer state including the plateau schedule, step) and a small JSON record
of what produced it: the model, the input size and the standardization
constants, so evaluation and prediction need nothing else.
"""

import contextlib
import json
import logging
import sys
from typing import Any, Callable, Iterable

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from digits_jax import paths
from digits_jax.errors import UserError
from digits_jax.errors import WriteFailed
from digits_jax.errors import in_one_line

BEST_METRIC = 'val_accuracy'

log = logging.getLogger(__name__)


def _best_metric(metrics) -> float:
  return metrics[BEST_METRIC]


def _options(keep: int, read_only: bool, track_best: bool = True):
  preservation = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
  ])
  return ocp.CheckpointManagerOptions(
      preservation_policy=preservation if track_best else None,
      best_fn=_best_metric if track_best else None,
      # Without tracking, no step's metrics are read at all.
      lightweight_initialize=not track_best,
      best_mode='max',
      # Reading (eval, predict, export) creates nothing and leaves a crashed
      # run's partial checkpoint for the next training run to remove. Not
      # orbax's read_only mode, which warns three times that it is on.
      create=not read_only,
      # Synchronous: a checkpoint is complete when `save` returns, so a
      # signal or crash right after cannot leave it half written.
      enable_async_checkpointing=False,
      cleanup_tmp_directories=not read_only,
  )


def create_manager(directory: epath.PathLike, keep: int,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A manager of the checkpoints in `directory` (an absolute local path or
  a URI such as gs://bucket/run/checkpoints)."""
  try:
    return ocp.CheckpointManager(epath.Path(directory),
                                 options=_options(keep, read_only))
  except Exception:  # pylint: disable=broad-except
    if not read_only:
      raise
    # Orbax reads every step's metrics to track the best one, and one that
    # does not read (a damaged checkpoint) ends that; reading needs no
    # tracking (`best_first` reads them one by one).
    return ocp.CheckpointManager(
        epath.Path(directory), options=_options(keep, read_only, False))


def read_metrics(manager_or_directory, step: int) -> dict | None:
  """A step's validation metrics; None for a mid-epoch save. Raises if the
  file does not read."""
  directory = getattr(manager_or_directory, 'directory',
                      manager_or_directory)
  path = epath.Path(directory) / str(step) / 'metrics' / 'metrics'
  return json.loads(path.read_text()) if path.exists() else None


def steps_with_unreadable_metrics(directory: epath.PathLike) -> list[int]:
  """The steps in `directory` whose metrics file does not read: orbax's
  manager cannot open a directory holding one for writing."""
  directory = epath.Path(directory)
  if not directory.exists():
    return []
  bad = []
  for entry in directory.iterdir():
    if entry.name.isdigit():
      try:
        read_metrics(directory, int(entry.name))
      except Exception:  # pylint: disable=broad-except
        bad.append(int(entry.name))
  return sorted(bad)


def set_aside(directory: epath.PathLike, aside: epath.PathLike, steps,
              why: str) -> None:
  """Moves damaged checkpoints out of `directory` into `aside` (kept, never
  deleted), so that a run can write those steps again. One host moves
  them; all wait for it."""
  directory, aside = epath.Path(directory), epath.Path(aside)
  if jax.process_index() == 0:
    aside.mkdir(parents=True, exist_ok=True)
    for step in steps:
      (directory / str(step)).rename(aside / str(step))
    log.warning('Moved the checkpoint(s) at step %s to %s: %s.',
                ', '.join(map(str, steps)), aside, why)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('damaged checkpoints set aside')


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         meta: dict, metrics: dict | None) -> None:
  """Writes a checkpoint; `metrics` None (a mid-epoch save) keeps it out of
  the choice of the best one. A write the machine refuses (a full disk, a
  read-only folder) is a WriteFailed; the partial checkpoint is removed,
  the earlier ones are as they were."""
  what = f'the checkpoint of step {step}'

  def write():
    with paths.writing(what, manager.directory), _quiet_write_faults():
      manager.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta)),
          metrics=metrics,
          force=True)
      manager.wait_until_finished()

  try:
    if paths.is_remote(manager.directory):
      # A bucket that stops answering: one line within the deadline.
      paths.write_remote(what, manager.directory, write)
    else:
      write()
  except WriteFailed as e:
    remove_partial(manager.directory, step)
    e.fault = paths.with_free_space(e.fault, manager.directory)
    raise


def complete_steps(directory: epath.PathLike) -> list[int]:
  """The steps of the complete checkpoints in a local `directory` (orbax
  renames a checkpoint to its step once every process has written it)."""
  directory = epath.Path(directory)
  if paths.is_remote(directory) or not directory.exists():
    return []
  return sorted(int(entry.name) for entry in directory.iterdir()
                if entry.name.isdigit())


def remove_partial(directory: epath.PathLike, step: int) -> None:
  """Removes what an unfinished save of `step` left (orbax's temporary
  folder), which holds space and is no checkpoint. Process 0 removes it,
  on a local disk (a bucket that stopped answering cannot be asked; the
  next run's manager removes it there)."""
  directory = epath.Path(directory)
  if (jax.process_index() != 0 or paths.is_remote(directory)
      or not directory.exists()):
    return
  for entry in directory.iterdir():
    if entry.name.startswith(f'{step}.orbax-checkpoint-tmp'):
      entry.rmtree(missing_ok=True)


class _WriteFaultFilter(logging.Filter):
  """Drops orbax's own log lines (and their tracebacks) for a write the
  machine refused, and asyncio's for the futures that write left: `save`
  says it in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return paths.write_fault_in_text(record.getMessage()) is None


def _into_a_closed_loop(unraisable) -> bool:
  """TensorStore's callbacks for a failed write, arriving after orbax
  closed the event loop they were to report to."""
  return (isinstance(unraisable.exc_value, RuntimeError)
          and 'Event loop is closed' in str(unraisable.exc_value))


@contextlib.contextmanager
def _quiet_write_faults():
  """Orbax's threads log a refused write at ERROR with a traceback before
  `save` sees it, and TensorStore's callbacks keep reporting it into
  orbax's closed event loops (each an ignored exception with a traceback):
  the WriteFailed says it instead. After a failed save they stay quiet to
  the end of the process, which that failure ends."""
  loggers = [logging.getLogger('absl'), logging.getLogger('asyncio')]
  quiet = _WriteFaultFilter()
  for logger in loggers:
    logger.addFilter(quiet)
  previous_hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: (
      None if _into_a_closed_loop(unraisable) else previous_hook(unraisable))
  yield
  # Reached only when the save succeeded.
  for logger in loggers:
    logger.removeFilter(quiet)
  sys.unraisablehook = previous_hook


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  restored = manager.restore(
      step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return dict(restored['meta'])


def check_compatible(meta: dict, config, directory: str) -> None:
  """Refuses a checkpoint written for another model, input size, number of
  ensemble members or LR schedule (each changes the shape of what is saved).
  Checkpoints from before ensembles hold one model."""
  written = {'model': meta.get('model'), 'input_size': meta.get('input_size'),
             'num_models': meta.get('num_models', 1),
             'lr_schedule': meta.get('config', {}).get('lr_schedule',
                                                       'plateau')}
  for key, value in written.items():
    if value != config[key]:
      raise UserError(
          f'the checkpoint in {directory} was written for {key}='
          f'{value!r}, but the config asks for {key}={config[key]!r}; '
          'use a fresh --workdir or the config that trained it')


# What a resumed run may change: where the data and the run live, how the
# work is spread and reported, and what is evaluated; none of it moves the
# training trajectory. Everything else a checkpoint's config records must
# match (so a key added later is protected unless listed here).
RESUMABLE_CHANGES = frozenset({
    'data_dir', 'eval_batch_size', 'max_test_examples', 'steps_per_dispatch',
    'log_every_steps', 'checkpoints_to_keep', 'parallelism', 'member_devices',
    'conv_impl', 'num_epochs', 'num_train_steps'})
# A step-driven schedule's length follows these, so they may change only
# where the schedule does not (the plateau).
_SCHEDULE_LENGTH = ('num_epochs', 'num_train_steps')


def check_same_recipe(meta: dict, config, directory) -> None:
  """Refuses to resume a checkpoint with a config that would train on
  differently (batch size, learning rate, augmentation, seed, ...): the run
  would change its recipe midway and its checkpoints and metrics describe
  neither. One line names each differing key with both values."""
  recorded = meta.get('config', {})
  current = json.loads(config.to_json())  # As recorded: plain values.
  free = RESUMABLE_CHANGES
  if recorded.get('lr_schedule', 'plateau') != 'plateau':
    free = free - set(_SCHEDULE_LENGTH)
  differing = [(key, recorded[key], current[key]) for key in sorted(recorded)
               if key not in free and key in current
               and recorded[key] != current[key]]
  if differing:
    changes = ', '.join(f'{key}={was!r} -> {now!r}'
                        for key, was, now in differing)
    raise UserError(
        f'the checkpoint in {directory} was trained with another recipe '
        f'({changes}); resume with the config that trained it, or use a '
        'fresh --workdir for the new one')


def restore_state(manager: ocp.CheckpointManager, step: int, target: Any):
  """Restores the train state onto the structure, dtypes and shardings of
  `target` (concrete or abstract arrays)."""
  abstract = jax.tree.map(ocp.arrays.to_shape_dtype_struct, target)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored['state']


def best_first(manager: ocp.CheckpointManager) -> list[int]:
  """The end-of-epoch checkpoints (those with validation metrics; a
  mid-epoch save is never the best), best first, the later of equals
  first, and last any whose metrics do not read: the order to evaluate
  them in."""
  scored, unreadable = [], []
  for step in manager.all_steps():
    try:
      metrics = read_metrics(manager, step)
    except Exception:  # pylint: disable=broad-except
      unreadable.append(step)
      continue
    if metrics and BEST_METRIC in metrics:
      scored.append((_best_metric(metrics), step))
  return ([step for _, step in sorted(scored, reverse=True)]
          + sorted(unreadable, reverse=True))


def restore_first(manager: ocp.CheckpointManager, steps: Iterable[int],
                  target: Any, directory, check: Callable[[dict], None]):
  """(step, meta, state, damaged) of the first of `steps` that restores
  onto `target`: a checkpoint whose files are missing, truncated or garbled
  is passed over with one warning naming it, and left as it is. `check`
  sees each checkpoint's record before its arrays are read (a config that
  cannot restore it is refused there, not taken for damage). `damaged`:
  the steps passed over. None if there are no steps; one error line if
  none restores."""
  damaged = []
  for step in steps:
    try:
      meta = read_meta(manager, step)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append((step, in_one_line(e)))
      continue
    check(meta)
    try:
      state = restore_state(manager, step, target)
    except Exception as e:  # pylint: disable=broad-except
      damaged.append((step, in_one_line(e)))
      continue
    for bad, why in damaged:
      log.warning('The checkpoint at step %d in %s does not restore (%s); '
                  'using step %d instead.', bad, directory, why, step)
    return step, meta, state, [bad for bad, _ in damaged]
  if damaged:
    listed = '; '.join(f'step {step}: {why}' for step, why in damaged)
    raise UserError(f'no checkpoint in {directory} restores ({listed}); '
                    'copy them again from where they came from, or use a '
                    'fresh --workdir')
  return None
