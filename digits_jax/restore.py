"""A trained run loaded for use: its best checkpoint, restored on this
process's devices, with the model and preprocessing it was trained with.

Evaluation, predict, export and serve all load a run through `restore_best`;
training resumes through checkpoint.py directly, onto its own devices.
"""

import dataclasses
import logging
import os
from typing import Any

from etils import epath

from digits_jax import checkpoint
from digits_jax import members as members_lib
from digits_jax import paths
from digits_jax import recipe
from digits_jax import steps
from digits_jax.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Restored:
  state: steps.TrainState
  model: Any  # models.create's.
  preprocess: steps.Preprocess
  meta: dict  # The checkpoint's record (recipe.checkpoint_meta).
  step: int
  members: members_lib.Members
  # What it is compiled for (restore_best's platform).
  platform: Any


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


def restore_best(config, members: members_lib.Members,
                 workdir: epath.PathLike, platform,
                 member: str = '') -> Restored:
  """The best checkpoint in `workdir` that restores, on this process's
  devices (a damaged one is passed over for the next best, with a
  warning), built and compiled for `platform` (platform.py).

  `member`: '' for all its members (an ensemble, a sweep); 'best' for the
  member with the best validation accuracy at that checkpoint; or a
  member's number.
  """
  workdir = paths.resolve(os.fspath(workdir))
  manager, best_step, best_meta = best_checkpoint(
      workdir, config.checkpoints_to_keep)
  del best_step
  # The model for the data it was trained on, as the best record says (the
  # checkpoints of one run share it; restore_first checks each).
  check = lambda meta: checkpoint.check_compatible(meta, config, workdir)
  check(best_meta)
  model, tx = recipe.build(config, platform, recipe.data_record(best_meta),
                           traced_keys=members.traced_keys)
  step, meta, state, _ = checkpoint.restore_first(
      manager, checkpoint.best_first(manager),
      members.abstract_train_state(model, tx), workdir / 'checkpoints',
      check=check)
  preprocess = recipe.preprocessing(config, meta)
  if member:
    index = _member_index(member, members.num_models,
                          checkpoint.read_metrics(workdir / 'checkpoints',
                                                  step))
    log.info('Member %d of %d (%s).', index, members.num_models,
             'the best by validation accuracy' if member == 'best'
             else 'as asked')
    if members.stacked:
      state = members_lib.member_of(state, index)
    members = members.single()
  return Restored(state=state, model=model, preprocess=preprocess, meta=meta,
                  step=int(step), members=members, platform=platform)


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
    return members_lib.rank_by_validation(metrics['member_val_accuracy'],
                                          metrics['member_val_loss'])[0]
  if not member.isdigit() or int(member) >= num_models:
    raise UserError(f'--member={member!r} must be best or a member\'s number, '
                    f'0 to {num_models - 1}')
  return int(member)
