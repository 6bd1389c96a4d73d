"""Checkpoints with orbax: the latest few and the best by validation accuracy.

Orbax writes each step into a temporary directory and renames it into place
when complete, so a crash mid-write leaves the previous checkpoints intact.
Each checkpoint holds the train state (parameters, BatchNorm statistics,
optimizer state including the plateau schedule, step) and a small JSON record
of what produced it: the model, the input size and the standardization
constants, so evaluation and prediction need nothing else.
"""

from typing import Any

from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from digits_jax.errors import UserError

BEST_METRIC = 'val_accuracy'


def _best_metric(metrics) -> float:
  return metrics[BEST_METRIC]


def create_manager(directory: epath.PathLike, keep: int,
                   read_only: bool = False) -> ocp.CheckpointManager:
  """A manager of the checkpoints in `directory` (an absolute local path or
  a URI such as gs://bucket/run/checkpoints)."""
  preservation = checkpoint_managers.AnyPreservationPolicy([
      checkpoint_managers.LatestN(n=keep),
      checkpoint_managers.BestN(get_metric_fn=_best_metric, n=1),
  ])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=preservation,
      best_fn=_best_metric,
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
  return ocp.CheckpointManager(epath.Path(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         meta: dict, metrics: dict | None) -> None:
  """Writes a checkpoint; `metrics` None (a mid-epoch save) keeps it out of
  the choice of the best one."""
  manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                              meta=ocp.args.JsonSave(meta)),
      metrics=metrics,
      force=True)
  manager.wait_until_finished()


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


def restore_state(manager: ocp.CheckpointManager, step: int, target: Any):
  """Restores the train state onto the structure, dtypes and shardings of
  `target` (concrete or abstract arrays)."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  return restored['state']
