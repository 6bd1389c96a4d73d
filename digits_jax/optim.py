"""The article's optimizer as one optax chain: L2 on two kernels, Adam, plateau.

`config.lr_schedule` picks how the learning rate moves: 'plateau' (the
article's) or 'onecycle' (a warmup to `learning_rate` and a cosine decay over
the run's steps, for short runs such as configs/fast.py).

Keras' `kernel_regularizer=l2(lam)` adds lam * ||w||^2 to the loss, so its
gradient 2 * lam * w is added to the gradient *before* Adam (coupled L2, not
AdamW's decoupled decay).

Keras' `ReduceLROnPlateau` lives outside the optimizer and is called once per
epoch with the validation loss. Here it is a transform whose state (the
current LR scale, the best loss, the epochs without improvement) sits in the
optimizer state, so checkpoints carry it; `report_validation_loss` is the
pure once-per-epoch update of that state.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from digits_jax import config_checks


class PlateauState(NamedTuple):
  scale: jax.Array  # Multiplies the base learning rate.
  best_loss: jax.Array
  num_bad_epochs: jax.Array


def scale_by_plateau() -> optax.GradientTransformation:
  """Scales updates by the factor that `report_validation_loss` maintains."""

  def init_fn(params):
    del params
    return PlateauState(scale=jnp.ones([], jnp.float32),
                        best_loss=jnp.full([], jnp.inf, jnp.float32),
                        num_bad_epochs=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(lambda u: u * state.scale.astype(u.dtype), updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _is_plateau(node) -> bool:
  return isinstance(node, PlateauState)


def report_validation_loss(opt_state, loss, *, factor: float, patience: int,
                           min_delta: float, min_scale: float):
  """Keras ReduceLROnPlateau's epoch-end rule, as a pure function of the state.

  The loss improves when it is below the best by more than `min_delta`. After
  `patience` epochs in a row without improvement the scale is multiplied by
  `factor` (never below `min_scale`) and the count starts again.
  """

  def update(state: PlateauState) -> PlateauState:
    improved = loss < state.best_loss - min_delta
    num_bad = jnp.where(improved, 0, state.num_bad_epochs + 1)
    cut = num_bad >= patience
    scale = jnp.where(cut, jnp.maximum(state.scale * factor, min_scale),
                      state.scale)
    return PlateauState(
        scale=scale.astype(jnp.float32),
        best_loss=jnp.where(improved, loss, state.best_loss).astype(
            jnp.float32),
        num_bad_epochs=jnp.where(cut, 0, num_bad).astype(jnp.int32))

  return jax.tree.map(lambda n: update(n) if _is_plateau(n) else n, opt_state,
                      is_leaf=_is_plateau)


def plateau_scale(opt_state) -> jax.Array:
  """The current LR multiplier held in the optimizer state."""
  states = [n for n in jax.tree.leaves(opt_state, is_leaf=_is_plateau)
            if _is_plateau(n)]
  return states[0].scale


def l2_mask(params, kernel_names) -> dict:
  """True for the kernels of the named layers (None: every layer's),
  False everywhere else."""

  def is_regularized(path, _):
    names = [getattr(p, 'key', None) for p in path]
    return names[-1] == 'kernel' and (
        kernel_names is None or any(n in kernel_names for n in names))

  return jax.tree_util.tree_map_with_path(is_regularized, params)


LR_SCHEDULES = config_checks.LR_SCHEDULES


# The one-cycle schedule starts at peak / 25 (optax's default div_factor).
_ONECYCLE_DIV_FACTOR = 25.0


def learning_rate_schedule(config, total_steps: int,
                           learning_rate=None) -> optax.Schedule:
  """The step-driven part of the learning rate (constant for 'plateau').

  `learning_rate`: the peak in place of config.learning_rate, possibly
  traced (a sweep's member).
  """
  peak = config.learning_rate if learning_rate is None else learning_rate
  if config.lr_schedule == 'onecycle':
    if isinstance(peak, (int, float)):
      return optax.cosine_onecycle_schedule(
          transition_steps=max(total_steps, 1), peak_value=peak,
          pct_start=config.warmup_fraction, div_factor=_ONECYCLE_DIV_FACTOR,
          final_div_factor=peak / config.min_learning_rate
          / _ONECYCLE_DIV_FACTOR)
    return _traced_onecycle(max(total_steps, 1), peak,
                            config.warmup_fraction, config.min_learning_rate)
  return optax.constant_schedule(peak)


def _traced_onecycle(total_steps: int, peak, warmup_fraction: float,
                     min_learning_rate: float) -> optax.Schedule:
  """optax.cosine_onecycle_schedule for a traced peak, value for value.

  optax checks its scale factors in Python (`scale >= 0`), which a traced
  peak cannot pass; the schedule is the same cosine interpolation from
  peak / 25 up to the peak over the warmup, then down to the minimum,
  written with the same operations (tests/test_optim.py compares every
  step's value with optax's).
  """
  boundaries = jnp.array([0, int(warmup_fraction * total_steps), total_steps])
  # optax accumulates the phases' start values as a product of scales.
  final_scale = 1 / (_ONECYCLE_DIV_FACTOR * (
      peak / min_learning_rate / _ONECYCLE_DIV_FACTOR))
  values = jnp.cumprod(jnp.stack([peak / _ONECYCLE_DIV_FACTOR,
                                  jnp.asarray(_ONECYCLE_DIV_FACTOR),
                                  final_scale]))

  def schedule(count):
    sizes = jnp.maximum(boundaries[1:] - boundaries[:-1], 1)
    inside = jnp.logical_and(boundaries[:-1] <= count, count < boundaries[1:])
    fraction = (count - boundaries[:-1]) / sizes
    start, end = values[:-1], values[1:]
    cosine = end + (start - end) / 2.0 * (jnp.cos(jnp.pi * fraction) + 1)
    return inside.dot(cosine) + (boundaries[-1] <= count) * values[-1]

  return schedule


def member_value(make, key: str,
                 default) -> optax.GradientTransformationExtraArgs:
  """`make(value)`, a transform of one hyperparameter, whose value is each
  update's `hparams[key]` (a sweep member's, traced), passed to `update`
  as an extra argument: optax's `inject_hyperparams` mechanism (the inner
  transform made from the values at each update), with the values read
  from the train state's one copy of them (`TrainState.hparams`, which the
  model, preprocessing and loss read too) instead of a second copy in the
  optimizer state. The state is `make(default)`'s: the same structure for
  every member and as a run without the sweep."""
  template = make(default)

  def update_fn(updates, state, params=None, *, hparams=None, **extra):
    del extra
    return make(hparams[key]).update(updates, state, params)

  return optax.GradientTransformationExtraArgs(template.init, update_fn)


def create_optimizer(config, l2_kernels, total_steps: int,
                     swept: tuple = ()) -> optax.GradientTransformation:
  """L2 on `l2_kernels`, Adam (Keras' defaults), then the learning rate:
  the plateau scale times the base rate, or the one-cycle schedule over
  `total_steps` (unused by 'plateau').

  `swept`: a sweep's traced keys; 'learning_rate' and 'l2' among them are
  each member's, read at each update from `tx.update(..., hparams=...)`
  (`member_value`). A swept `l2` keeps its transform whatever its value (0
  adds 0 * w), so that every member's state has one structure.
  """

  def l2_of(weight):
    return optax.add_decayed_weights(2 * weight,
                                     mask=lambda p: l2_mask(p, l2_kernels))

  def rate_of(learning_rate):
    if config.lr_schedule == 'plateau':
      return optax.scale(-learning_rate)
    return optax.scale_by_learning_rate(
        learning_rate_schedule(config, total_steps, learning_rate))

  if 'l2' in swept:
    l2 = member_value(l2_of, 'l2', config.l2)
  else:
    l2 = l2_of(config.l2) if config.l2 else optax.identity()
  rate = (member_value(rate_of, 'learning_rate', config.learning_rate)
          if 'learning_rate' in swept else rate_of(config.learning_rate))
  adam = optax.scale_by_adam(b1=config.adam_b1, b2=config.adam_b2,
                             eps=config.adam_eps)
  if config.lr_schedule == 'plateau':
    return optax.chain(l2, adam, scale_by_plateau(), rate)
  return optax.chain(l2, adam, rate)


def current_learning_rate(opt_state, step: int, config, total_steps: int,
                          learning_rate: float | None = None) -> float:
  """The learning rate the next step uses, for the logs; `learning_rate`:
  a sweep member's, in place of the config's."""
  if learning_rate is None:
    learning_rate = config.learning_rate
  if config.lr_schedule == 'plateau':
    return learning_rate * float(plateau_scale(opt_state))
  return float(learning_rate_schedule(config, total_steps,
                                      learning_rate)(step))


def report_epoch(opt_state, val_loss, config, learning_rate=None):
  """Applies the config's plateau rule for one epoch's validation loss.

  `learning_rate`: a sweep member's (traced), in place of the config's.
  """
  if learning_rate is None:
    learning_rate = config.learning_rate
  return report_validation_loss(
      opt_state, val_loss, factor=config.plateau_factor,
      patience=config.plateau_patience, min_delta=config.plateau_min_delta,
      min_scale=config.min_learning_rate / learning_rate)
