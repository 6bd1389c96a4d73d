"""The models: each built-in in a file of its own here, a user's by import path.

`config.model` is a built-in's name, the name of a module of this package
('improved_lenet', 'lenet5', ...), or the import path of a user's Flax
module, 'package.module:ClassName', Linen or NNX. A built-in's file says
everything about it: the module (`Model`), the layers whose kernels take
L2 (`L2_REGULARIZED`), the input it expects (its docstring) and the config
values it takes (its constructor's keywords).

`create` makes either into the one interface the trainer uses, whichever
Flax API wrote the module (linen_adapter.py, nnx_adapter.py):

  model.init(key) -> (params, batch_stats)        nested dicts of arrays
  model.apply_train(params, batch_stats, images, dropout_key, values)
      -> (logits, batch_stats)
  model.apply_eval(variables, images) -> logits   variables: {'params',
                                                  'batch_stats'}
  model.l2_layers     the layers whose kernels take config.l2 (None: all)
  model.traced        the swept values the module takes traced

The step, the members and the checkpoints see only this; nothing outside
this package imports Flax's module APIs or names a model.

A module is constructed with those of these keywords its constructor names
(README, "Your own model"): `num_classes` and `input_shape` (H, W, C), from
the data; `dtype` (config.compute_dtype); `dropout_rate`
(config.dropout_rate); `conv_general_dilated` (XLA:CPU's faster
convolution, platform.py); `axis_name` (pmap's collective axis, for
BatchNorm); and everything in `config.model_kwargs`. An NNX module also
gets `rngs`.
"""

import importlib
import inspect
import pkgutil
import types

from digits_jax.errors import UserError

# (This module imports JAX and Flax only when it builds a model: config
# checks list the built-ins through it before any heavy import.)

# Keywords the trainer passes where a constructor names them (the rest of
# what it may take come from config.model_kwargs).
TRAINER_KEYWORDS = ('num_classes', 'input_shape', 'dtype', 'dropout_rate',
                    'conv_general_dilated', 'axis_name')
# The swept values a module can take traced (a Linen module's field: one
# compiled program for every member's value).
MODULE_TRACED = ('dropout_rate',)


def built_in_names() -> list[str]:
  """The built-in models: this package's modules but the adapters (found
  without importing them)."""
  return sorted(info.name for info in pkgutil.iter_modules(__path__)
                if not info.name.endswith('_adapter'))


def check_name(name: str) -> None:
  """A one-line UserError where `name` (config.model) is neither a built-in
  nor an import path 'package.module:Class' (which `create` imports)."""
  if ':' in name:
    module_path, _, attribute = name.partition(':')
    if all(part.isidentifier() for part in module_path.split('.')) and (
        attribute.isidentifier()):
      return
  elif name in built_in_names():
    return
  raise UserError(f'config.model={name!r} is not a model; choose one of '
                  f'{", ".join(built_in_names())}, or give your own Flax '
                  'module as package.module:ClassName')


def _import(name: str) -> tuple[type, types.ModuleType]:
  """(the module class, the Python module that holds it) that `name`
  (config.model) names; one line where it names none."""
  if ':' in name:
    module_path, _, attribute = name.partition(':')
    try:
      python_module = importlib.import_module(module_path)
    except ImportError as e:
      raise UserError(f'config.model={name!r}: cannot import {module_path} '
                      f'({type(e).__name__}: {e}); put its folder on '
                      'PYTHONPATH or install its package') from None
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise UserError(f'config.model={name!r}: importing {module_path} '
                      f'raised {type(e).__name__}: {e}') from None
    if not hasattr(python_module, attribute):
      raise UserError(f'config.model={name!r}: {module_path} has no '
                      f'{attribute!r}')
    return getattr(python_module, attribute), python_module
  check_name(name)
  python_module = importlib.import_module(f'{__name__}.{name}')
  return python_module.Model, python_module


def create(name: str, *, input_shape: tuple, num_classes: int, dtype,
           dropout_rate=0.0, conv_general_dilated=None, axis_name=None,
           model_kwargs: dict | None = None):
  """The model `name` names (config.model), for digits of `input_shape`
  (H, W, C) into `num_classes` classes; a one-line UserError for a name
  that names no Flax module, a module that cannot be constructed so, or
  one whose output is not [N, num_classes]."""
  check_name(name)
  from digits_jax.models import linen_adapter  # pylint: disable=g-import-not-at-top
  from digits_jax.models import nnx_adapter  # pylint: disable=g-import-not-at-top
  cls, python_module = _import(name)
  if linen_adapter.is_module(cls):
    adapter = linen_adapter.LinenModel
  elif nnx_adapter.is_module(cls):
    adapter = nnx_adapter.NnxModel
  else:
    raise UserError(f'config.model={name!r} is not a Flax module class (a '
                    'subclass of flax.linen.Module or flax.nnx.Module)')
  offered = {'num_classes': num_classes, 'input_shape': tuple(input_shape),
             'dtype': dtype, 'dropout_rate': dropout_rate,
             'conv_general_dilated': conv_general_dilated,
             'axis_name': axis_name}
  accepted = _keywords(cls)
  if (not (isinstance(dropout_rate, (int, float)) and dropout_rate == 0)
      and 'dropout_rate' not in accepted):
    raise UserError(f'config.dropout_rate={dropout_rate!r}: model {name} '
                    'takes no dropout_rate; set config.dropout_rate=0 (or '
                    'give its constructor a dropout_rate)')
  kwargs = {k: v for k, v in offered.items() if k in accepted}
  kwargs.update(model_kwargs or {})
  l2_layers = getattr(cls, 'L2_REGULARIZED',
                      getattr(python_module, 'L2_REGULARIZED', None))
  model = adapter(name, cls, kwargs, tuple(input_shape), l2_layers)
  _check_output(model, name, num_classes)
  if axis_name is not None and 'axis_name' not in accepted:
    _check_no_batch_statistics(model, name)
  return model


def _check_no_batch_statistics(model, name: str) -> None:
  """Under pmap (one program per device), BatchNorm averages its
  statistics over the devices only through the axis name its constructor
  takes: a model with BatchNorm and no `axis_name` keyword would train
  another model on each device count. Refused in one line."""
  import jax  # pylint: disable=g-import-not-at-top
  _, batch_stats = jax.eval_shape(model.init, jax.random.key(0))
  if jax.tree.leaves(batch_stats):
    raise UserError(
        f'config.parallelism=pmap: model {name} keeps BatchNorm statistics '
        'but its constructor takes no axis_name, so each device would '
        'normalize by its own part of the batch; use config.parallelism='
        'mesh (the partitioner makes the statistics global)')


def _keywords(cls) -> set[str]:
  try:
    parameters = inspect.signature(cls.__init__).parameters.values()
  except (TypeError, ValueError):
    return set()
  if any(p.kind == p.VAR_KEYWORD for p in parameters):
    return set(TRAINER_KEYWORDS)
  return {p.name for p in parameters}


def _check_output(model, name: str, num_classes: int) -> None:
  """The model's logits for two digits, by shape alone: [2, num_classes]."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  images = jax.ShapeDtypeStruct((2, *model.input_shape), jnp.float32)
  try:
    params, batch_stats = jax.eval_shape(model.init, jax.random.key(0))
    logits = jax.eval_shape(
        lambda p, s, x: model.apply_eval({'params': p, 'batch_stats': s}, x),
        params, batch_stats, images)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    message = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise UserError(f'config.model={name!r} fails on digits of shape '
                    f'[N, {", ".join(map(str, model.input_shape))}] '
                    f'({type(e).__name__}: {message})') from None
  if (getattr(logits, 'shape', None) != (2, num_classes)
      or not jnp.issubdtype(logits.dtype, jnp.floating)):
    got = (f'{logits.dtype}{list(logits.shape)}' if hasattr(logits, 'shape')
           else type(logits).__name__)
    raise UserError(f'config.model={name!r} returns {got} for 2 digits; it '
                    f'must return logits [N, {num_classes}] (floats, one '
                    'per class)')
