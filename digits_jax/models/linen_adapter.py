"""A Flax Linen module as the trainer's model (models/__init__.py).

The module is called as `module(images, train=...)` where its `__call__`
takes `train` (Flax's examples' way of switching BatchNorm and dropout),
else `module(images)`. Its variables are 'params' and, where it has
BatchNorm, 'batch_stats'; dropout draws from the 'dropout' stream.
"""

import inspect

import flax.linen as nn
import jax.numpy as jnp

from digits_jax import models
from digits_jax.errors import UserError

# (Sown activations, `Module.sow`, are not among them: Flax's `init` leaves
# the 'intermediates' collection out.)
KEPT = ('params', 'batch_stats')


def is_module(cls) -> bool:
  return isinstance(cls, type) and issubclass(cls, nn.Module)


class LinenModel:
  """The module `cls(**kwargs)`, for digits of `input_shape` (H, W, C)."""

  def __init__(self, name: str, cls, kwargs: dict, input_shape: tuple,
               l2_layers):
    try:
      self.module = cls(**kwargs)
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise UserError(f'config.model={name!r}: constructing it raised '
                      f'{type(e).__name__}: {e}') from None
    self.name = name
    self.input_shape = input_shape
    self.l2_layers = l2_layers
    self.traced = tuple(k for k in models.MODULE_TRACED if k in kwargs)
    self._takes_train = 'train' in inspect.signature(
        cls.__call__).parameters

  def _call_kwargs(self, train: bool) -> dict:
    return {'train': train} if self._takes_train else {}

  def init(self, key):
    """(params, batch_stats) for a new model from `key`."""
    variables = self.module.init(
        {'params': key}, jnp.zeros((1, *self.input_shape), jnp.float32),
        **self._call_kwargs(False))
    others = sorted(set(variables) - set(KEPT))
    if others:
      raise UserError(
          f'config.model={self.name!r} keeps the variable collection(s) '
          f'{", ".join(others)}; the trainer keeps {" and ".join(KEPT)} '
          '(its checkpoints hold those)')
    return variables['params'], variables.get('batch_stats', {})

  def apply_train(self, params, batch_stats, images, dropout_key,
                  values=None):
    """(logits, the updated batch_stats) in training mode. `values`: a
    sweep member's traced values, those the module takes (`traced`)."""
    module = self.module
    taken = {k: values[k] for k in self.traced if values and k in values}
    if taken:
      module = module.clone(**taken)
    logits, updates = module.apply(
        {'params': params, 'batch_stats': batch_stats}, images,
        mutable=['batch_stats'], rngs={'dropout': dropout_key},
        **self._call_kwargs(True))
    return logits.astype(jnp.float32), updates['batch_stats']

  def apply_eval(self, variables, images):
    """Logits in inference mode (BatchNorm's running averages)."""
    return self.module.apply(variables, images,
                             **self._call_kwargs(False)).astype(jnp.float32)
