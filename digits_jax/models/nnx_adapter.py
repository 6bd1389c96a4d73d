"""A Flax NNX module as the trainer's model (models/__init__.py).

The module is built once, abstractly (`nnx.eval_shape`), to learn its
structure: its graph in training mode (`module.train()`) and in inference
mode (`module.eval()`, which switches NNX's BatchNorm and Dropout), and the
shapes of its state. The trainer keeps the state as plain nested dicts,
`nnx.Param`s as params and `nnx.BatchStat`s as batch_stats, and each call
merges them back into a module, pure and traceable as a Linen apply.

Dropout's random state is not kept: each training step reseeds every RNG
stream of the module from the step's dropout key, so a resumed run draws
what the run that never stopped drew (as the Linen path's `rngs`).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from digits_jax.errors import UserError


def is_module(cls) -> bool:
  return isinstance(cls, type) and issubclass(cls, nnx.Module)


class NnxModel:
  """The module `cls(**kwargs, rngs=...)`, for digits of `input_shape`."""

  def __init__(self, name: str, cls, kwargs: dict, input_shape: tuple,
               l2_layers):
    self.name = name
    self.input_shape = input_shape
    self.l2_layers = l2_layers
    self.traced = ()  # NNX keeps its rates as Python attributes.
    self._construct = lambda rngs: cls(**kwargs, rngs=rngs)
    try:
      abstract = nnx.eval_shape(lambda: self._construct(nnx.Rngs(0)))
    except Exception as e:  # pylint: disable=broad-exception-caught
      message = str(e).strip().splitlines()[0] if str(e).strip() else ''
      raise UserError(f'config.model={name!r}: constructing it raised '
                      f'{type(e).__name__}: {message}') from None
    abstract.train()
    self._train_graph, self._params, self._stats, self._rngs, others = (
        nnx.split(abstract, nnx.Param, nnx.BatchStat, nnx.RngState, ...))
    if jax.tree.leaves(others):
      kinds = sorted({type(v).__name__ for v in jax.tree.leaves(
          others, is_leaf=lambda x: isinstance(x, nnx.Variable))})
      raise UserError(
          f'config.model={name!r} keeps state of kind(s) {", ".join(kinds)}; '
          'the trainer keeps nnx.Param, nnx.BatchStat and RNG streams (its '
          'checkpoints hold those)')
    abstract.eval()
    self._eval_graph = nnx.split(abstract, nnx.Param, nnx.BatchStat,
                                 nnx.RngState, ...)[0]

  def init(self, key):
    """(params, batch_stats) for a new model from `key`."""
    module = self._construct(nnx.Rngs(key))
    _, params, stats, _ = nnx.split(module, nnx.Param, nnx.BatchStat, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(stats)

  def _module(self, graph, params, batch_stats, key):
    return nnx.merge(graph, _state(self._params, params),
                     _state(self._stats, batch_stats),
                     _reseeded(self._rngs, key))

  def apply_train(self, params, batch_stats, images, dropout_key,
                  values=None):
    """(logits, the updated batch_stats) in training mode."""
    del values  # No traced values: `traced` is empty.
    module = self._module(self._train_graph, params, batch_stats,
                          dropout_key)
    logits = module(images)
    return (logits.astype(jnp.float32),
            nnx.to_pure_dict(nnx.state(module, nnx.BatchStat)))

  def apply_eval(self, variables, images):
    """Logits in inference mode."""
    module = self._module(self._eval_graph, variables['params'],
                          variables['batch_stats'], jax.random.key(0))
    return module(images).astype(jnp.float32)


def _state(template: nnx.State, values: dict) -> nnx.State:
  """`template`'s structure holding `values` (a pure dict of it)."""
  state = jax.tree.map(lambda x: x, template)
  nnx.replace_by_pure_dict(state, values)
  return state


def _reseeded(template: nnx.State, key) -> nnx.State:
  """The RNG streams of `template`, each key drawn from `key` by its place
  and each count at 0."""
  leaves, structure = jax.tree.flatten(template)
  return jax.tree.unflatten(structure, [
      jax.random.fold_in(key, i)
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
      else jnp.zeros(leaf.shape, leaf.dtype)
      for i, leaf in enumerate(leaves)])
