"""Up-front validation of a config: one clear message per bad value.

Unknown keys are already refused by the locked ConfigDict when the command
line overrides them; this checks the keys a config file made and the
values, so that a bad one never reaches JAX and fails there with a
traceback. Imports nothing heavy: `--help` and a bad value answer at once.
"""

import os
import runpy

from digits_jax import models
from digits_jax.errors import UserError

# The configs beside the package (not installed: files that --config names).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs')

# The names a config chooses among. Here, in a module that imports nothing
# heavy, so that checking a config (and `--help`) costs no JAX or Flax
# import; optim.py and platform.py take theirs from here. (Models are
# found when the run builds one: digits_jax/models/.)
LR_SCHEDULES = ('plateau', 'onecycle')
CONV_IMPLS = ('auto', 'xla', 'eigen', 'onednn')
PARALLELISMS = ('mesh', 'pmap')
INPUT_SIZES = (28, 32)
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise UserError(message)


def load_config(name_or_path: str):
  """A config file's `get_config()`, by path or by its name in configs/.

  The one way configs are loaded outside `--config` (tests, scripts, the
  defaults below), as the derived configs load theirs: by path, with
  `runpy`, so that no `configs` package needs to be importable.
  """
  path = name_or_path
  if os.sep not in path and not path.endswith('.py'):
    path = os.path.join(CONFIGS_DIR, f'{name_or_path}.py')
  return runpy.run_path(path)['get_config']()


def default_config():
  """The recipe every config builds on (configs/improved.py), or None where
  the package is installed without the configs beside it."""
  if not os.path.exists(os.path.join(CONFIGS_DIR, 'improved.py')):
    return None
  return load_config('improved')


def _type_error(name: str, value, default) -> str | None:
  """What is wrong with `value` for a key whose default is `default`."""
  if isinstance(default, bool):
    ok, wanted = isinstance(value, bool), 'True or False'
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
    wanted = 'an integer'
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    wanted = 'a number'
  elif isinstance(default, str):
    ok, wanted = isinstance(value, str), 'a string'
  else:
    return None
  return None if ok else f'config.{name}={value!r} must be {wanted}'


def _check_keys_and_types(config, defaults) -> None:
  """Types first, so that the range checks below compare numbers.

  Each key's type is its default's. ml_collections already refuses a value
  of another type as a derived config file or `--config.KEY` sets it, but
  not None, not True into an integer key, and not a config a file builds
  from scratch (which may also misspell or drop a key): hence the check
  against the defaults themselves. Without them (an installed package with
  no configs/ beside it), each key's own type stands for its default's.
  """
  if defaults is not None:
    for name in sorted(set(config) - set(defaults)):
      raise UserError(f'config.{name} is not a key of the recipe '
                      '(configs/improved.py lists them all)')
    for name in sorted(set(defaults) - set(config)):
      raise UserError(f'the config lacks config.{name} (configs/improved.py '
                      'has its default)')
  for name in config:
    value = config[name]
    if defaults is not None:
      default = defaults[name]
    elif value is None:
      default = config.get_ref(name).get_type()()  # None is typed by its key.
    else:
      default = value
    message = _type_error(name, value, default)
    if message:
      raise UserError(message)


def validate(config, defaults=None) -> None:
  """Raises UserError naming the first bad value and what it must be.

  `defaults`: `default_config()`, whose values give each key its type.
  """
  _check_keys_and_types(config, defaults)
  models.check_name(config.model)
  for name in ('batch_size', 'eval_batch_size', 'num_epochs',
               'checkpoints_to_keep'):
    _require(config[name] > 0,
             f'config.{name}={config[name]!r} must be a positive integer')
  _require(config.steps_per_dispatch >= -1,
           f'config.steps_per_dispatch={config.steps_per_dispatch!r} must be '
           '-1 (the platform\'s default), 0 (a whole epoch) or positive')
  _require(config.num_models >= 1,
           f'config.num_models={config.num_models!r} must be a positive '
           'integer (1: a single model; K > 1: an ensemble of K)')
  for name in ('num_train_steps', 'validation_size', 'member_devices',
               'max_train_examples', 'max_test_examples', 'seed',
               'split_seed', 'plateau_patience', 'log_every_steps'):
    _require(config[name] >= 0,
             f'config.{name}={config[name]!r} must be a non-negative integer')
  _require(config.input_size in INPUT_SIZES,
           f'config.input_size={config.input_size!r} must be one of '
           f'{INPUT_SIZES} (28: MNIST as is; 32: padded as in the article)')
  _require(config.learning_rate > 0,
           f'config.learning_rate={config.learning_rate!r} must be positive')
  _require(0 < config.min_learning_rate <= config.learning_rate,
           f'config.min_learning_rate={config.min_learning_rate!r} must be '
           f'positive and at most learning_rate={config.learning_rate!r}')
  _require(config.lr_schedule in LR_SCHEDULES,
           f'config.lr_schedule={config.lr_schedule!r} must be one of '
           f'{LR_SCHEDULES}')
  _require(0 < config.plateau_factor <= 1,
           f'config.plateau_factor={config.plateau_factor!r} must be in (0, 1]')
  _require(config.plateau_min_delta >= 0,
           f'config.plateau_min_delta={config.plateau_min_delta!r} must be '
           'non-negative')
  _require(config.l2 >= 0, f'config.l2={config.l2!r} must be non-negative')
  _require(config.adam_eps > 0,
           f'config.adam_eps={config.adam_eps!r} must be positive')
  # Fractions and probabilities.
  _require(0 <= config.dropout_rate < 1,
           f'config.dropout_rate={config.dropout_rate!r} is a probability of '
           'dropping a unit: it must be in [0, 1)')
  for name in ('adam_b1', 'adam_b2', 'zoom_range', 'shift_range',
               'warmup_fraction'):
    _require(0 <= config[name] < 1,
             f'config.{name}={config[name]!r} must be in [0, 1)')
  for name in ('label_smoothing', 'ema_decay'):
    _require(0 <= config[name] < 1,
             f'config.{name}={config[name]!r} must be in [0, 1) (0: off)')
  _require(config.elastic_alpha >= 0,
           f'config.elastic_alpha={config.elastic_alpha!r} must be '
           'non-negative (0: no elastic distortion)')
  _require(config.elastic_sigma > 0,
           f'config.elastic_sigma={config.elastic_sigma!r} must be positive '
           '(pixels)')
  _require(0 < config.bag_fraction <= 1,
           f'config.bag_fraction={config.bag_fraction!r} is the fraction of '
           'the training split each run trains on: it must be in (0, 1]')
  _require(0 <= config.rotation_degrees <= 180,
           f'config.rotation_degrees={config.rotation_degrees!r} must be in '
           '[0, 180]')
  _require(config.conv_impl in CONV_IMPLS,
           f'config.conv_impl={config.conv_impl!r} must be one of '
           f'{CONV_IMPLS}')
  _require(config.parallelism in PARALLELISMS,
           f'config.parallelism={config.parallelism!r} must be one of '
           f'{PARALLELISMS}')
  _require(config.compute_dtype in COMPUTE_DTYPES,
           f'config.compute_dtype={config.compute_dtype!r} must be one of '
           f'{COMPUTE_DTYPES}')
