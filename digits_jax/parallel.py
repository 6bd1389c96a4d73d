"""Data parallelism over all devices: jit over a device mesh, or pmap.

Both wrap the same pure `train.scan_train_steps` and give the same model as
one device would (tests/test_parallel.py):

* 'mesh' (default, what JAX recommends now): the state and the dataset are
  replicated over a 1-D mesh, the batch indices are split on its 'data' axis,
  and XLA's SPMD partitioner inserts the gradient all-reduce and makes
  BatchNorm's batch statistics global.
* 'pmap': one program per device over the local shard of the batch; the step
  averages gradients and metrics with `lax.pmean`, BatchNorm averages its
  statistics over the axis, and random draws (augmentation, dropout) are
  made for the global batch and sliced, so they match one device's.
"""

import dataclasses
import functools

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from digits_jax.errors import UserError

AXIS = 'data'
MODES = ('mesh', 'pmap')


@dataclasses.dataclass(frozen=True)
class DataParallel:
  mode: str
  devices: tuple

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def axis_name(self) -> str | None:
    """The collective axis the step and the model name (pmap only)."""
    return AXIS if self.mode == 'pmap' else None

  @functools.cached_property
  def mesh(self) -> jax.sharding.Mesh:
    return jax.sharding.Mesh(np.asarray(self.devices), (AXIS,))

  def replicate(self, tree):
    """The same values on every device."""
    if self.mode == 'pmap':
      # pmap's layout: a leading device axis, one slice per device.
      stack = lambda x: np.broadcast_to(np.asarray(x),
                                        (self.num_devices, *np.shape(x)))
      return jax.device_put(jax.tree.map(stack, tree),
                            NamedSharding(self.mesh, P(AXIS)))
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def unreplicate(self, tree):
    """One copy of replicated values (what checkpoints and eval take)."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: x[0], tree)
    return tree

  def shard_batch_indices(self, batch_indices):
    """[K, B] global indices -> split over devices along the batch."""
    if self.mode == 'pmap':
      k, b = batch_indices.shape
      per_device = np.asarray(batch_indices).reshape(
          k, self.num_devices, b // self.num_devices).transpose(1, 0, 2)
      return jax.device_put(per_device, NamedSharding(self.mesh, P(AXIS)))
    return jax.device_put(batch_indices,
                          NamedSharding(self.mesh, P(None, AXIS)))

  def compile(self, scan_fn):
    """Wraps `scan_fn(state, images, labels, batch_indices, key)`."""
    if self.mode == 'pmap':
      return jax.pmap(scan_fn, axis_name=AXIS,
                      in_axes=(0, 0, 0, 0, None), donate_argnums=(0,))
    replicated = NamedSharding(self.mesh, P())
    return jax.jit(
        scan_fn,
        in_shardings=(replicated, replicated, replicated,
                      NamedSharding(self.mesh, P(None, AXIS)), replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,))

  def metrics_to_host(self, metrics):
    return jax.device_get(self.unreplicate(metrics))


def create(config) -> DataParallel:
  mode = config.get('parallelism', 'mesh')
  if mode not in MODES:
    raise UserError(f'config.parallelism={mode!r} must be one of {MODES}')
  devices = tuple(jax.local_devices() if mode == 'pmap' else jax.devices())
  if config.batch_size % len(devices):
    raise UserError(
        f'config.batch_size={config.batch_size} does not divide by the '
        f'{len(devices)} devices; use a multiple of {len(devices)}')
  return DataParallel(mode=mode, devices=devices)
