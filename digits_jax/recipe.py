"""What a config describes, built once for every caller: the model and the
optimizer (the config's, for the data's shape), the preprocessing (the
data's) and the train step.

The trainer, evaluation, predict, export, the benchmark, the profiles and
the tests all build through here, so that none of them can drift from what
training runs.
"""

import functools
import json

import jax.numpy as jnp

from digits_jax import cpu_kernels
from digits_jax import models
from digits_jax import optim
from digits_jax import platform as platform_lib
from digits_jax import steps
from digits_jax.errors import UserError


# What a record of the data (`data_record`) says where a checkpoint from
# before the trainer recorded it does not: MNIST's.
_MNIST_SHAPE = {'image_shape': [28, 28, 1], 'num_classes': 10}


def data_record(source: dict) -> dict:
  """What the model and preprocessing take from the data: 'image_shape'
  [H, W, C], 'num_classes', 'pixel_mean', 'pixel_std'; from the training
  data (input_pipeline.Splits.record) or a checkpoint's record of it."""
  return {key: source.get(key, _MNIST_SHAPE.get(key)) for key in
          ('image_shape', 'num_classes', 'pixel_mean', 'pixel_std')}


def build(config, platform: platform_lib.Platform, data: dict,
          axis_name=None, total_steps: int = 0, traced_keys: tuple = ()):
  """What the config decides: the model (for the data's shape and classes,
  `data_record`) and the optimizer, for `platform`.

  `total_steps` sets the length of a step-driven LR schedule; restoring
  leaves it out (only the optimizer state's structure matters there).
  `traced_keys`: a sweep's (members.Members), whose optimizer state has
  the structure of every member's (a swept L2 keeps its transform).
  """
  data = data_record(data)
  model = models.create(
      config.model,
      input_shape=(config.input_size, config.input_size,
                   data['image_shape'][-1]),
      num_classes=data['num_classes'],
      dtype=jnp.dtype(config.compute_dtype),
      dropout_rate=config.dropout_rate, axis_name=axis_name,
      conv_general_dilated=(cpu_kernels.conv_with_cpu_weight_gradient
                            if platform.cpu_weight_gradients else None),
      model_kwargs=config.model_kwargs.to_dict())
  swept_by_the_model = set(traced_keys) & set(models.MODULE_TRACED)
  if swept_by_the_model - set(model.traced):
    raise UserError(
        f'config.sweep: model {config.model} does not take '
        f'{", ".join(sorted(swept_by_the_model))} as a traced value (an '
        'NNX module keeps it as a Python number, a Linen module takes it '
        'as a field); sweep it in separate runs')
  tx = optim.create_optimizer(config, model.l2_layers, total_steps,
                              traced_keys)
  return model, tx


def preprocessing(config, pixel_stats: dict) -> steps.Preprocess:
  """What the data decides: the standardization by the training split's
  'pixel_mean' and 'pixel_std' (a checkpoint's record holds them), with the
  config's augmentation."""
  return steps.Preprocess(
      input_size=config.input_size,
      pixel_mean=pixel_stats['pixel_mean'],
      pixel_std=pixel_stats['pixel_std'],
      rotation_degrees=config.rotation_degrees,
      zoom_range=config.zoom_range, shift_range=config.shift_range,
      elastic_alpha=config.elastic_alpha, elastic_sigma=config.elastic_sigma)


def checkpoint_meta(config, data: dict, epoch: int) -> dict:
  """What a checkpoint records beside the state: enough to rebuild the
  model and its preprocessing without the training data (`data_record`)."""
  return {'model': config.model, 'input_size': config.input_size,
          'num_models': config.num_models, **data_record(data),
          'epoch': epoch, 'config': json.loads(config.to_json())}


def train_step_fn(config, model, tx, preprocess: steps.Preprocess,
                  axis_name: str | None = None, traced_keys: tuple = ()):
  """`steps.train_step` with this config's model, optimizer and
  preprocessing bound: (state, batch, key) -> (state, metrics).

  In a sweep (`traced_keys`, members.Members'), the swept values come from
  the state (`state.hparams`, traced): the model and the optimizer (built
  for them by `build`) take theirs from it in the step, and they replace
  the config's in the preprocessing and the loss here: one program for
  every member and every value.
  """
  bound = functools.partial(steps.train_step, augment_images=config.augment,
                            axis_name=axis_name)
  if not traced_keys:
    return functools.partial(bound, model=model, tx=tx,
                             preprocess=preprocess,
                             label_smoothing=config.label_smoothing,
                             ema_decay=config.ema_decay)

  def swept_step(state, batch, key):
    values = state.hparams
    member_preprocess = preprocess.replace(**{
        k: values[k] for k in ('rotation_degrees', 'zoom_range', 'shift_range')
        if k in values})
    return bound(state, batch, key, model=model, tx=tx,
                 preprocess=member_preprocess,
                 label_smoothing=values.get('label_smoothing',
                                            config.label_smoothing),
                 ema_decay=values.get('ema_decay', config.ema_decay))

  return swept_step
