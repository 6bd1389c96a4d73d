"""The member axis: K models trained as one program (ensembles and sweeps).

`resolve` turns a validated config into the run's `Members`, once, in
main.py: how many models, each one's seed and (in a sweep, sweep.py) its
swept values, and which of those the step reads as traced values. Everything
below main takes that description; nothing else reads `config.sweep`.

With K > 1, every leaf of the train state (parameters, BatchNorm statistics,
optimizer state with its plateau) carries a leading member axis of size K,
and one compiled step trains all members. Member i is the single run with
its own seed and values (`member_config`): its initialization, data order,
augmentation and dropout draws come from that seed exactly as a single
run's do, so any member can be reproduced on its own (tests/test_ensemble.py,
tests/test_sweep.py).

How the step runs over the member axis is the platform's choice
(platform.py): `jax.vmap` on accelerators, where one member leaves the chip
mostly idle; on the CPU the members' steps are laid side by side in the same
program, because vmap turns each convolution into a grouped one, which
XLA:CPU runs slower than K plain ones (docs/performance.md;
scripts/benchmark.py --num_models=K measures both). Both forms compute the
same function.

K = 1 adds no axis: the state, the keys and the step are a single model's,
and its checkpoints are a single model's.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from digits_jax import config_checks
from digits_jax import optim
from digits_jax import steps
from digits_jax import sweep
from digits_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Members:
  """The run's members, as `resolve` describes them.

  `seeds`: member i's seed. `values`: a sweep's, member i's swept values
  {key: number} (empty without a sweep). `traced_keys`: the swept keys the
  step reads from the state (`TrainState.hparams`), in the spec's order.
  `ema`: the state keeps a moving average of the weights.
  """
  seeds: tuple = (0,)
  values: tuple = dataclasses.field(default=(), hash=False)
  traced_keys: tuple = ()
  ema: bool = False

  @property
  def num_models(self) -> int:
    return len(self.seeds)

  @property
  def stacked(self) -> bool:
    """Whether the state has a member axis (K > 1)."""
    return self.num_models > 1

  @property
  def is_sweep(self) -> bool:
    return bool(self.values)

  def single(self) -> 'Members':
    """One member of these, on its own (no axis)."""
    return Members(seeds=self.seeds[:1], ema=self.ema)

  def hparams(self) -> dict | None:
    """The traced values for the train state: [K] float32 per key (scalars
    for K = 1); None when nothing is traced."""
    if not self.traced_keys:
      return None
    column = lambda k: [float(v[k]) for v in self.values]
    return {k: np.asarray(column(k) if self.stacked else column(k)[0],
                          np.float32) for k in self.traced_keys}

  def learning_rates(self) -> list | None:
    """Each member's swept learning rate; None if it is not swept."""
    if 'learning_rate' not in self.traced_keys:
      return None
    return [float(v['learning_rate']) for v in self.values]

  def keys(self):
    """(init, shuffle, train) keys: a single run's from its seed, or member
    i's from its own, stacked."""
    of = lambda seed: jax.random.split(jax.random.key(seed), 3)
    if not self.stacked:
      return tuple(of(self.seeds[0]))
    keys = jnp.stack([of(s) for s in self.seeds])
    return keys[:, 0], keys[:, 1], keys[:, 2]

  def create_train_state(self, model, tx, init_key) -> steps.TrainState:
    # One compiled program: `model.init` run eagerly is about a hundred
    # small ones (the same values, bit for bit).
    create = lambda key, hparams: steps.create_train_state(
        model, tx, key, ema=self.ema, hparams=hparams)
    return jax.jit(jax.vmap(create) if self.stacked else create)(
        init_key, self.hparams())

  def abstract_train_state(self, model, tx) -> steps.TrainState:
    """The train state's shapes and dtypes, placed on this process's first
    device, computing nothing: the target a checkpoint is restored into,
    whatever device count wrote it."""
    shapes = jax.eval_shape(
        lambda key: self.create_train_state(model, tx, key),
        self.keys()[0])
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        shapes)

  def train_step(self, step_fn: Callable, vmapped: bool) -> Callable:
    """`step_fn` (state, batch, key) -> (state, metrics) over the members:
    batch leaves [K, B, ...], keys [K], metrics [K]; vmapped or side by side
    (the platform's `vmap_members`)."""
    if not self.stacked:
      return step_fn
    if vmapped:
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
    """Each member's plateau follows its own validation loss, and in a
    sweep of learning rates its floor (config.min_learning_rate) is reached
    at its own rate's scale."""
    rates = self.learning_rates()
    if not self.stacked:
      return optim.report_epoch(opt_state, val_losses[0], config,
                                None if rates is None else rates[0])
    losses = jnp.asarray(val_losses, jnp.float32)
    if rates is None:
      return jax.vmap(lambda s, loss: optim.report_epoch(s, loss, config))(
          opt_state, losses)
    return jax.vmap(lambda s, loss, rate: optim.report_epoch(
        s, loss, config, rate))(opt_state, losses,
                                jnp.asarray(rates, jnp.float32))

  def current_learning_rates(self, host_opt_state, step: int, config,
                             total_steps: int) -> list[float]:
    """The rate each member's next step uses (for the logs)."""
    rates = self.learning_rates() or [None] * self.num_models
    return [optim.current_learning_rate(opt_state, step, config, total_steps,
                                        rate)
            for opt_state, rate in zip(self.unstack(host_opt_state), rates)]

  def step(self, step: np.ndarray) -> int:
    """The training step of a host copy of `state.step` (the members all
    take the same steps)."""
    return int(np.asarray(step).reshape(-1)[0])

  def unstack(self, tree) -> list:
    """The members' trees, one per member ([tree] for K = 1)."""
    if not self.stacked:
      return [tree]
    return [member_of(tree, i) for i in range(self.num_models)]

  def describe(self, i: int) -> str:
    """Member i's swept values, 'key=value ...' ('' without a sweep)."""
    return sweep.describe(self.values[i]) if self.is_sweep else ''


def resolve(config):
  """(config, Members) for a validated config: a sweep's members are its
  combinations (config.num_models set to their count, what checkpoints
  record), each one's config checked (one line for the first bad one); an
  ensemble's, seeds config.seed + i. The sweep spec is parsed here, once."""
  values = sweep.member_values(config)
  if not values:
    return config, Members(
        seeds=tuple(config.seed + i for i in range(config.num_models)),
        ema=config.ema_decay > 0)
  if config.num_models not in (1, len(values)):
    raise UserError(
        f'config.num_models={config.num_models} with config.sweep: a '
        f'sweep\'s members are its {len(values)} combinations; leave '
        'num_models at 1, and to repeat each over seeds sweep seed=0,1,... '
        'too')
  config = config.copy_and_resolve_references()
  config.num_models = len(values)
  traced = tuple(k for k in values[0] if k in sweep.TRACED)
  members = Members(
      seeds=tuple(int(v.get('seed', config.seed)) for v in values),
      values=tuple(values), traced_keys=traced,
      ema=config.ema_decay > 0 or 'ema_decay' in traced)
  for j in range(members.num_models):
    member_config(config, members, j)  # Each member's values checked.
  return config, members


def member_config(config, members: Members, i: int):
  """Member i's own config: the single run that member i is."""
  member = config.copy_and_resolve_references()
  for key, value in (members.values[i] if members.is_sweep else {}).items():
    member[key] = value
  if not members.is_sweep:
    member.seed = members.seeds[i]
  member.sweep = ''
  member.num_models = 1
  try:
    config_checks.validate(member)
  except UserError as e:
    raise UserError(f'config.sweep, member {i} ({members.describe(i)}): {e}'
                    ) from None
  return member


def member_of(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def rank_by_validation(accuracies, losses) -> list[int]:
  """Members best first by validation: the higher accuracy, then the lower
  loss, then the lower number. The one order that the epoch's best member,
  --member=best, the sweep's table and eval's chosen ensemble share."""
  return sorted(range(len(accuracies)),
                key=lambda j: (-accuracies[j], losses[j], j))


def combine(member_logits: np.ndarray) -> np.ndarray:
  """The ensemble's log-probabilities from the members' logits [K, N, C]:
  the log of the mean of the members' probabilities."""
  log_probs = special.log_softmax(member_logits, axis=-1)
  return special.logsumexp(log_probs, axis=0) - np.log(len(member_logits))


def agreement(member_logits: np.ndarray) -> np.ndarray:
  """How many members predict the ensemble's class, per image [N]."""
  ensemble_class = combine(member_logits).argmax(-1)
  return (member_logits.argmax(-1) == ensemble_class).sum(0)


def accuracy(member_logits: np.ndarray, labels: np.ndarray) -> float:
  """The accuracy of the members' combined prediction."""
  return float((combine(member_logits).argmax(-1) == labels).mean())


def choose_by_validation(val_logits: np.ndarray,
                         val_labels: np.ndarray) -> dict:
  """The ensemble a sweep's members make, chosen on validation alone: the
  k best members by validation accuracy (then loss), k the one whose
  ensemble is best on validation (the fewer among equals). Takes no test
  data, so no choice in it can look at the test set."""
  log_probs = special.log_softmax(val_logits, axis=-1)
  losses = [float(-lp[np.arange(len(val_labels)), val_labels].mean())
            for lp in log_probs]
  accuracies = [float((logits.argmax(-1) == val_labels).mean())
                for logits in val_logits]
  order = rank_by_validation(accuracies, losses)
  val_by_k = [accuracy(val_logits[order[:k]], val_labels)
              for k in range(1, len(order) + 1)]
  k = 1 + int(np.argmax(val_by_k))
  return {'members': order[:k], 'val_accuracy': val_by_k[k - 1],
          'val_accuracy_by_k': val_by_k}
