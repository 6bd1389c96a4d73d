"""Up-front validation of a config: one clear message per bad value.

Unknown keys are already refused by the locked ConfigDict when the command
line overrides them; this checks the values, so that a bad one never reaches
JAX and fails there with a traceback.
"""

from digits_jax.errors import UserError

# The names a config chooses among. Here, in a module that imports nothing
# heavy, so that checking a config (and `--help`) costs no JAX or Flax
# import; models.py, optim.py and platform.py take theirs from here.
MODEL_NAMES = ('improved_lenet', 'lenet5')
LR_SCHEDULES = ('plateau', 'onecycle')
CONV_IMPLS = ('auto', 'xla', 'eigen')
PARALLELISMS = ('mesh', 'pmap')
INPUT_SIZES = (28, 32)
COMPUTE_DTYPES = ('float32', 'bfloat16')


def _require(condition: bool, message: str) -> None:
  if not condition:
    raise UserError(message)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_types(config) -> None:
  """Types first, so that the range checks below compare numbers."""
  for name in ('batch_size', 'eval_batch_size', 'num_epochs',
               'checkpoints_to_keep', 'num_train_steps', 'steps_per_dispatch',
               'validation_size', 'max_train_examples', 'max_test_examples',
               'seed', 'split_seed', 'plateau_patience', 'input_size',
               'num_processes', 'process_id', 'log_every_steps',
               'num_models', 'member_devices'):
    _require(_is_int(config[name]),
             f'config.{name}={config[name]!r} must be an integer')
  for name in ('learning_rate', 'min_learning_rate', 'warmup_fraction',
               'adam_b1', 'adam_b2', 'adam_eps', 'l2', 'plateau_factor',
               'plateau_min_delta', 'rotation_degrees', 'zoom_range',
               'dropout_rate', 'bag_fraction', 'elastic_alpha',
               'elastic_sigma',
               'shift_range'):
    _require(_is_number(config[name]),
             f'config.{name}={config[name]!r} must be a number')
  for name in ('augment', 'distributed'):
    _require(isinstance(config[name], bool),
             f'config.{name}={config[name]!r} must be True or False')
  for name in ('model', 'data_dir', 'conv_impl', 'compute_dtype',
               'parallelism', 'coordinator_address', 'lr_schedule'):
    _require(isinstance(config[name], str),
             f'config.{name}={config[name]!r} must be a string')


def validate(config) -> None:
  """Raises UserError naming the first bad value and what it must be."""
  _check_types(config)
  _require(config.model in MODEL_NAMES,
           f'config.model={config.model!r} is not a model; choose one of '
           f'{", ".join(sorted(MODEL_NAMES))}')
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
  _require(config.model != 'lenet5' or config.dropout_rate == 0,
           f'config.dropout_rate={config.dropout_rate!r}: lenet5 has no '
           'dropout; set it to 0')
  for name in ('adam_b1', 'adam_b2', 'zoom_range', 'shift_range',
               'warmup_fraction'):
    _require(0 <= config[name] < 1,
             f'config.{name}={config[name]!r} must be in [0, 1)')
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
  if config.distributed and config.coordinator_address:
    _require(config.num_processes >= 1 and
             0 <= config.process_id < config.num_processes,
             f'config.process_id={config.process_id!r} must be in [0, '
             f'num_processes={config.num_processes!r})')
