"""The pure training and inference steps, and what they carry.

Everything here is a function of arrays in and arrays out, so that jit, pmap,
a device mesh or `lax.scan` can wrap it unchanged: `train_step` takes
(state, batch, key) and returns (state, metrics). The dataset lives on the
device as uint8; an epoch's order is a device-side permutation
(`epoch_batches`), and `scan_train_steps` gathers, pads, augments and
standardizes each batch inside the compiled program, several steps per
dispatch.
"""

from typing import Any, Callable

from flax import struct
import jax
import jax.numpy as jnp
import optax

from digits_jax import augment

# What `fold_in` mixes into a key for a draw of its own beside the key's
# main use: the shuffle key's bag beside each epoch's order (no epoch number
# reaches it), the augmentation key's elastic field beside the affine
# parameters (drawn from `split`s of that key).
_SIDE_STREAM = 2**32 - 1


class TrainState(struct.PyTreeNode):
  """What a run carries from step to step, and its checkpoints hold.

  `ema`: with weight averaging on (`config.ema_decay`), the moving average
  of the parameters and BatchNorm statistics, {'params', 'batch_stats'};
  None (no leaves, no change to the program) when off.
  `hparams`: in a sweep (sweep.py), the member's swept values as float32
  scalars by name, read by the step as traced values; None otherwise.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema: Any = None
  hparams: Any = None

  def inference_variables(self) -> dict:
    """The weights that evaluation, predict, serve and export use: the
    moving average when the run keeps one."""
    if self.ema is not None:
      return self.ema
    return {'params': self.params, 'batch_stats': self.batch_stats}


@struct.dataclass
class Preprocess:
  """uint8 digits [B, H, W] -> standardized model input [B, S, S, 1], the
  digits centred in S x S (`input_size`)."""
  input_size: int = struct.field(pytree_node=False)
  pixel_mean: float = struct.field(pytree_node=False)
  pixel_std: float = struct.field(pytree_node=False)
  rotation_degrees: float = struct.field(pytree_node=False, default=0.0)
  zoom_range: float = struct.field(pytree_node=False, default=0.0)
  shift_range: float = struct.field(pytree_node=False, default=0.0)
  # 0: no elastic distortion (augment.elastic_displacements).
  elastic_alpha: float = struct.field(pytree_node=False, default=0.0)
  elastic_sigma: float = struct.field(pytree_node=False, default=4.0)

  def __call__(self, images, augment_key=None, axis_name=None):
    """Under pmap (`axis_name`), the augmentation is drawn for the global
    batch and sliced, so it does not depend on the number of devices."""
    x = images.astype(jnp.float32)
    pad = (self.input_size - x.shape[1]) // 2
    if pad:
      x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    if augment_key is not None:
      local = x.shape[0]
      shards = 1 if axis_name is None else jax.lax.psum(1, axis_name)
      params = augment.random_params(
          augment_key, local * shards, self.input_size,
          rotation_degrees=self.rotation_degrees, zoom_range=self.zoom_range,
          shift_range=self.shift_range)
      displacements = None
      if self.elastic_alpha:
        displacements = augment.elastic_displacements(
            jax.random.fold_in(augment_key, _SIDE_STREAM), local * shards,
            self.input_size, alpha=self.elastic_alpha,
            sigma=self.elastic_sigma)
      if axis_name is not None:
        start = jax.lax.axis_index(axis_name) * local
        params, displacements = jax.tree.map(
            lambda p: jax.lax.dynamic_slice_in_dim(p, start, local),
            (params, displacements))
      x = augment.affine_warp(x, params, displacements)
    return ((x - self.pixel_mean) / self.pixel_std)[..., None]


def cross_entropy(logits, labels, label_smoothing=0.0):
  """Per-example cross-entropy; with `label_smoothing` s, against targets
  of 1 - s on the label plus s spread evenly over all classes (Szegedy et
  al., 2016). s = 0 as a Python number is the plain loss, unchanged."""
  plain = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if isinstance(label_smoothing, (int, float)) and label_smoothing == 0:
    return plain
  uniform = -jax.nn.log_softmax(logits).mean(-1)
  return (1 - label_smoothing) * plain + label_smoothing * uniform


def ema_decay_at(step, decay):
  """The averaging's decay at `step` (the steps taken before this update):
  `decay`, but at most (1 + step) / (10 + step), so that the first steps
  do not weigh the initialization for thousands of steps (as
  tf.train.ExponentialMovingAverage with num_updates)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.asarray(decay, jnp.float32),
                     (1 + step) / (10 + step))


def update_ema(ema, variables, decay):
  """One step of the moving average of `variables`."""
  return jax.tree.map(lambda e, x: decay * e + (1 - decay) * x, ema,
                      variables)


def train_step(state: TrainState, batch: dict, key: jax.Array, *,
               model, tx: optax.GradientTransformation, preprocess: Preprocess,
               augment_images: bool, axis_name: str | None = None,
               label_smoothing=0.0, ema_decay=0.0):
  """One optimizer step: (state, batch, key) -> (state, metrics).

  Randomness is `fold_in(key, step)`, so a run restored at any step draws
  the same augmentation and dropout as the run that never stopped.
  `model` is a models.create's (any Flax module, through its adapter).
  `axis_name` names the pmap axis to average gradients and metrics over;
  the model must then carry the same axis name (BatchNorm, dropout).
  `label_smoothing` and `ema_decay` may be traced (a sweep's members), and
  the model takes those of the state's `hparams` it can (dropout); the
  moving average is kept where the state holds one (`state.ema`).
  """
  step_key = jax.random.fold_in(key, state.step)
  augment_key, dropout_key = jax.random.split(step_key)
  images = preprocess(batch['image'],
                      augment_key if augment_images else None, axis_name)

  def loss_fn(params):
    logits, batch_stats = model.apply_train(
        params, state.batch_stats, images, dropout_key, state.hparams)
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  metrics = {'loss': loss,
             'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])}
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    metrics = jax.lax.pmean(metrics, axis_name)
  if state.hparams is None:
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
  else:  # A sweep member's values reach the optimizer (optim.member_value).
    updates, opt_state = tx.update(grads, state.opt_state, state.params,
                                   hparams=state.hparams)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema
  if ema is not None:
    ema = update_ema(ema, {'params': params, 'batch_stats': batch_stats},
                     ema_decay_at(state.step, ema_decay))
  new_state = state.replace(step=state.step + 1, params=params,
                            batch_stats=batch_stats, opt_state=opt_state,
                            ema=ema)
  return new_state, metrics


def scan_train_steps(step_fn: Callable, state: TrainState, images: jax.Array,
                     labels: jax.Array, batch_indices: jax.Array,
                     key: jax.Array, *, unroll: bool = False):
  """Runs one step per row of `batch_indices` [K, B] over device data.

  Returns the final state and each step's metrics, stacked to shape [K].
  `unroll=True` compiles the K steps as straight-line code, which XLA:CPU
  needs (platform.py).
  """

  def body(state, indices):
    batch = {'image': images[indices], 'label': labels[indices]}
    return step_fn(state, batch, key)

  return _scan(body, state, batch_indices, unroll)


def _scan(body, state, xs, unroll: bool):
  """`lax.scan`, and for `unroll` with a single step, the step itself:
  `unroll=True` over one step leaves JAX's while loop in place (unroll 1),
  which XLA:CPU runs many times slower (docs/performance.md, the end of
  'Ensembles on the CPU')."""
  if unroll and jax.tree.leaves(xs)[0].shape[0] == 1:
    state, out = body(state, jax.tree.map(lambda x: x[0], xs))
    return state, jax.tree.map(lambda y: y[None], out)
  return jax.lax.scan(body, state, xs, unroll=unroll)


def bag(key: jax.Array, num_examples: int, bag_size: int) -> jax.Array:
  """The examples a run trains on: `bag_size` of the `num_examples`, drawn
  without replacement from the shuffle `key`, in index order. An ensemble's
  members draw from their own keys, so each sees its own part of the data
  (bagging, as in subsampled bootstrap aggregation)."""
  permutation = jax.random.permutation(jax.random.fold_in(key, _SIDE_STREAM),
                                       num_examples)
  return jnp.sort(permutation[:bag_size])


def epoch_batches(key: jax.Array, epoch: int, num_examples: int,
                  batch_size: int, bag_size: int | None = None) -> jax.Array:
  """This epoch's shuffled example indices as [steps_per_epoch, batch_size].

  With `bag_size` < `num_examples`, the epoch goes once over the run's
  `bag` (the same bag every epoch); without, over all examples. The
  remainder that does not fill a batch is left out of this epoch (a
  different remainder each epoch).
  """
  size = num_examples if bag_size is None else bag_size
  steps = size // batch_size
  order = jax.random.permutation(jax.random.fold_in(key, epoch), size)
  if size < num_examples:
    order = bag(key, num_examples, size)[order]
  return order[:steps * batch_size].reshape(steps, batch_size)


def predict_logits(variables, batches, *, model, preprocess: Preprocess):
  """Logits [M, B, C] for uint8 images in batches [M, B, H, W], one batch
  after another."""
  return jax.lax.map(
      lambda batch: model.apply_eval(variables, preprocess(batch)), batches)


def create_train_state(model, tx, key, *, ema: bool = False,
                       hparams: dict | None = None) -> TrainState:
  """The initial state; with `ema`, a moving average starting at the
  initial weights; `hparams`, a sweep member's values (float32)."""
  params, batch_stats = model.init(key)
  return TrainState(
      step=jnp.zeros([], jnp.int32), params=params, batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema=({'params': params, 'batch_stats': batch_stats} if ema else None),
      hparams=(None if hparams is None else
               jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), hparams)))
