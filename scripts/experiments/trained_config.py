"""The config a run folder's best checkpoint was trained with, for the
analysis scripts that restore finished runs (ensemble_errors.py,
test_time_views.py) without being told the run's config file."""

import os
import runpy

import ml_collections

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def trained_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the best checkpoint in `workdir` was written with, over
  configs/improved.py's defaults (for keys added after it was written)."""
  from digits_jax import restore
  from digits_jax.errors import UserError
  _, _, meta = restore.best_checkpoint(workdir)
  config = meta.get('config')
  if config is None:
    raise UserError(f'the checkpoint in {workdir} does not record its '
                    'config; it predates config recording')
  defaults = runpy.run_path(os.path.join(ROOT, 'configs', 'improved.py'))
  merged = defaults['get_config']()
  merged.update(config)
  return merged
