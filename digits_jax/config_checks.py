"""Up-front validation of a config: one clear message per bad value.

Unknown keys are already refused by the locked ConfigDict when the command
line overrides them; this checks the values, so that a bad one never reaches
JAX and fails there with a traceback.
"""

from digits_jax import models
from digits_jax import optim
from digits_jax.errors import UserError

DATASETS = ('mnist',)
INPUT_SIZES = (28, 32)
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise UserError(message)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate(config) -> None:
  _require(config.model in models.MODELS,
           f'config.model={config.model!r} is not a model; choose one of '
           f'{", ".join(sorted(models.MODELS))}')
  _require(config.dataset in DATASETS,
           f'config.dataset={config.dataset!r} is not supported; choose one '
           f'of {", ".join(DATASETS)}')
  for name in ('batch_size', 'eval_batch_size', 'num_epochs'):
    value = config[name]
    _require(_is_int(value) and value > 0,
             f'config.{name}={value!r} must be a positive integer')
  for name in ('num_train_steps', 'steps_per_dispatch', 'validation_size',
               'max_train_examples', 'max_test_examples', 'seed',
               'split_seed', 'plateau_patience'):
    value = config[name]
    _require(_is_int(value) and value >= 0,
             f'config.{name}={value!r} must be a non-negative integer')
  _require(_is_int(config.checkpoints_to_keep) and
           config.checkpoints_to_keep >= 1,
           f'config.checkpoints_to_keep={config.checkpoints_to_keep!r} must be'
           ' at least 1')
  _require(config.input_size in INPUT_SIZES,
           f'config.input_size={config.input_size!r} must be one of '
           f'{INPUT_SIZES} (28: MNIST as is; 32: padded as in the article)')
  _require(config.learning_rate > 0,
           f'config.learning_rate={config.learning_rate!r} must be positive')
  _require(0 < config.min_learning_rate <= config.learning_rate,
           f'config.min_learning_rate={config.min_learning_rate!r} must be '
           f'positive and at most learning_rate={config.learning_rate!r}')
  _require(config.lr_schedule in optim.LR_SCHEDULES,
           f'config.lr_schedule={config.lr_schedule!r} must be one of '
           f'{optim.LR_SCHEDULES}')
  _require(0 <= config.warmup_fraction < 1,
           f'config.warmup_fraction={config.warmup_fraction!r} must be in '
           '[0, 1)')
  _require(0 < config.plateau_factor <= 1,
           f'config.plateau_factor={config.plateau_factor!r} must be in (0, 1]')
  _require(config.l2 >= 0, f'config.l2={config.l2!r} must be non-negative')
  for name in ('adam_b1', 'adam_b2'):
    _require(0 <= config[name] < 1,
             f'config.{name}={config[name]!r} must be in [0, 1)')
  _require(config.adam_eps > 0,
           f'config.adam_eps={config.adam_eps!r} must be positive')
  for name in ('zoom_range', 'shift_range'):
    _require(0 <= config[name] < 1,
             f'config.{name}={config[name]!r} must be in [0, 1)')
  _require(0 <= config.rotation_degrees <= 180,
           f'config.rotation_degrees={config.rotation_degrees!r} must be in '
           '[0, 180]')
  _require(config.get('conv_impl', 'auto') in models.CONV_IMPLS,
           f'config.conv_impl={config.get("conv_impl")!r} must be one of '
           f'{models.CONV_IMPLS}')
  _require(config.get('parallelism', 'mesh') in ('mesh', 'pmap'),
           f'config.parallelism={config.get("parallelism")!r} must be mesh '
           'or pmap')
  dtype = config.get('compute_dtype', 'float32')
  _require(dtype in COMPUTE_DTYPES,
           f'config.compute_dtype={dtype!r} must be one of {COMPUTE_DTYPES}')
