"""K models trained as one: the member axis of an ensemble.

With `config.num_models` = K > 1, every leaf of the train state (parameters,
BatchNorm statistics, optimizer state with its plateau) carries a leading
member axis of size K, and one compiled step trains all members. Member i is
the single-model run with seed `config.seed + i`: its initialization, data
order, augmentation and dropout draws come from that seed exactly as a
single run's do, so any member can be reproduced on its own
(tests/test_ensemble.py).

How the step runs over the member axis is the platform's choice
(platform.py): `jax.vmap` on accelerators, where one member leaves the chip
mostly idle; on the CPU the members' steps are laid side by side in the same
program, because vmap turns each convolution into a grouped one, which
XLA:CPU runs slower than K plain ones (docs/performance.md;
scripts/benchmark.py --num_models=K measures both). Both forms compute the
same function.

K = 1 adds no axis: the state, the keys and the step are a single model's,
as before ensembles existed, and its checkpoints are unchanged.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from digits_jax import optim
from digits_jax import steps


@dataclasses.dataclass(frozen=True)
class Members:
  """The member axis: how many models, and whether the step is vmapped.

  A sweep's members (sweep.py) bring their own `seeds` (else member i's is
  seed + i) and `hparams`, {key: one value per member}, which the train
  state carries; `ema`: the state keeps a moving average of the weights.
  """
  num_models: int = 1
  vmapped: bool = True
  seeds: tuple | None = None
  hparams: dict | None = dataclasses.field(default=None, hash=False)
  ema: bool = False

  @property
  def stacked(self) -> bool:
    """Whether the state has a member axis (K > 1)."""
    return self.num_models > 1

  def member_seeds(self, seed: int) -> list[int]:
    """Member i's seed: `seed + i`, or a sweep's own."""
    if self.seeds is not None:
      return list(self.seeds)
    return [seed + i for i in range(self.num_models)]

  def keys(self, seed: int):
    """(init, shuffle, train) keys: a single run's from `seed`, or member i's
    from its seed (`member_seeds`), stacked."""
    def of(member_seed):
      return jax.random.split(jax.random.key(member_seed), 3)
    seeds = self.member_seeds(seed)
    if not self.stacked:
      return tuple(of(seeds[0]))
    keys = jnp.stack([of(s) for s in seeds])
    return keys[:, 0], keys[:, 1], keys[:, 2]

  def _hparams(self):
    """The swept values as arrays ([K] per key; scalars for K = 1)."""
    if self.hparams is None:
      return None
    return {k: np.asarray(v if self.stacked else v[0], np.float32)
            for k, v in self.hparams.items()}

  def create_train_state(self, model, tx, init_key,
                         input_size: int) -> steps.TrainState:
    # One compiled program: `model.init` run eagerly is about a hundred
    # small ones (the same values, bit for bit).
    create = lambda key, hparams: steps.create_train_state(
        model, tx, key, input_size, ema=self.ema, hparams=hparams)
    return jax.jit(jax.vmap(create) if self.stacked else create)(
        init_key, self._hparams())

  def abstract_train_state(self, model, tx,
                           input_size: int) -> steps.TrainState:
    """The train state's shapes and dtypes, placed on this process's first
    device, computing nothing: the target a checkpoint is restored into,
    whatever device count wrote it."""
    shapes = jax.eval_shape(
        lambda key: self.create_train_state(model, tx, key, input_size),
        self.keys(0)[0])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        shapes)

  def train_step(self, step_fn: Callable) -> Callable:
    """`step_fn` (state, batch, key) -> (state, metrics) over the members:
    batch leaves [K, B, ...], keys [K], metrics [K]."""
    if not self.stacked:
      return step_fn
    if self.vmapped:
      return jax.vmap(step_fn)

    def side_by_side(state, batch, key):
      outputs = [step_fn(*member_of((state, batch, key), i))
                 for i in range(self.num_models)]
      return stack(outputs)

    return side_by_side

  def epoch_batches(self, shuffle_key, epoch: int, num_examples: int,
                    batch_size: int, bag_size: int | None = None
                    ) -> jax.Array:
    """The epoch's example indices: [steps, B], or [steps, K, B] with each
    member's own order (and, with `bag_size`, its own bag)."""
    order = lambda key: steps.epoch_batches(key, epoch, num_examples,
                                            batch_size, bag_size)
    if not self.stacked:
      return order(shuffle_key)
    return jnp.swapaxes(jax.vmap(order)(shuffle_key), 0, 1)

  def report_epoch(self, opt_state, val_losses, config):
    """Each member's plateau follows its own validation loss (and, in a
    sweep of learning rates, its own rate's floor)."""
    rates = (self.hparams or {}).get('learning_rate')
    if not self.stacked:
      return optim.report_epoch(opt_state, val_losses, config,
                                None if rates is None else rates[0])
    if rates is None:
      return jax.vmap(lambda s, loss: optim.report_epoch(s, loss, config))(
          opt_state, jnp.asarray(val_losses, jnp.float32))
    return jax.vmap(lambda s, loss, rate: optim.report_epoch(
        s, loss, config, rate))(opt_state,
                                jnp.asarray(val_losses, jnp.float32),
                                jnp.asarray(rates, jnp.float32))

  def step(self, step: np.ndarray) -> int:
    """The training step of a host copy of `state.step` (the members all
    take the same steps)."""
    return int(np.asarray(step).reshape(-1)[0])

  def unstack(self, tree) -> list:
    """The members' trees, one per member ([tree] for K = 1)."""
    if not self.stacked:
      return [tree]
    return [member_of(tree, i) for i in range(self.num_models)]


def member_of(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def combine(member_logits: np.ndarray) -> np.ndarray:
  """The ensemble's log-probabilities from the members' logits [K, N, C]:
  the log of the mean of the members' probabilities."""
  log_probs = special.log_softmax(member_logits, axis=-1)
  return special.logsumexp(log_probs, axis=0) - np.log(len(member_logits))


def agreement(member_logits: np.ndarray) -> np.ndarray:
  """How many members predict the ensemble's class, per image [N]."""
  ensemble_class = combine(member_logits).argmax(-1)
  return (member_logits.argmax(-1) == ensemble_class).sum(0)
