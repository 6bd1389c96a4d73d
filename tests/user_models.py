"""Users' own Flax modules, as a user writes them outside digits_jax and
names them by import path (config.model='user_models:SmallLinenNet'): the
tests put this folder on the path, as a user's PYTHONPATH does."""

import flax.linen as nn
from flax import nnx


class SmallLinenNet(nn.Module):
  """A Linen CNN in the Flax examples' style, with BatchNorm and dropout
  switched by `train`, and the trainer's keywords it wants; it sows its
  features, as one does to look inside a model."""
  num_classes: int = 10
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.max_pool(x, (2, 2), (2, 2))
    self.sow('intermediates', 'features', x)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x.reshape((x.shape[0], -1)))


class SmallNnxNet(nnx.Module):
  """Flax's NNX MNIST example's shape of module: constructed with `rngs`
  alone, its sizes written for MNIST, BatchNorm and dropout switched by
  `.train()` / `.eval()`."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.dropout = nnx.Dropout(0.2, rngs=rngs)
    self.linear = nnx.Linear(14 * 14 * 8, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(self.norm(nnx.relu(self.conv(x))), (2, 2), (2, 2))
    return self.linear(self.dropout(x).reshape((x.shape[0], -1)))


class WrongOutput(nn.Module):
  """Five outputs, not one per class."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(5)(x.reshape((x.shape[0], -1)))


class KeepsACounter(nn.Module):
  """State in a collection the trainer does not keep (and a sown
  activation, which is no state: Flax's init leaves it out)."""

  @nn.compact
  def __call__(self, x):
    calls = self.variable('counters', 'calls', lambda: 0)
    calls.value += 1
    x = nn.Dense(10)(x.reshape((x.shape[0], -1)))
    self.sow('intermediates', 'logits', x)
    return x


class NotAModule:
  """A class, but not a Flax module."""
