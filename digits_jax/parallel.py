"""Data parallelism over all devices: jit over a device mesh, or pmap.

Where the train state, the dataset and the batch indices live, and the
shardings train.py's `jax.jit` takes; both forms run the same pure
`steps.scan_train_steps` and give the same model as one device would
(tests/test_parallel.py):

* 'mesh' (default, what JAX recommends now): the state and the dataset are
  replicated over a 1-D mesh, the batch indices are split on its 'data' axis,
  and XLA's SPMD partitioner inserts the gradient all-reduce and makes
  BatchNorm's batch statistics global.
* 'pmap': one program per device over the local shard of the batch; the step
  averages gradients and metrics with `lax.pmean`, BatchNorm averages its
  statistics over the axis, and random draws (augmentation, dropout) are
  made for the global batch and sliced, so they match one device's.

An ensemble (`config.num_models` K > 1, members.py) trains on a 2-D mesh,
('members', 'data'): its state's leading member axis is split over the
first, each batch over the second. By default as many devices as divide both
K and the device count go to the members, whose steps need no communication
at all; the rest split each member's batch as above.

Several processes (hosts) run the same program as one: each places its own
devices' copies of the dataset (MNIST is 47 MB of uint8) and its part of
every global array from the values every process holds alike.
"""

import dataclasses
import functools
import math
import re
from typing import NamedTuple

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from digits_jax.errors import UserError

AXIS = 'data'
MEMBER_AXIS = 'members'
MODES = ('mesh', 'pmap')


class Shardings(NamedTuple):
  """The train program's shardings on the mesh: `state` (the train state
  and the per-member keys), `replicated` (the dataset, a single run's key),
  `batch_indices` [K steps, (members,) B] and `metrics` [K steps,
  (members)]."""
  state: NamedSharding
  replicated: NamedSharding
  batch_indices: NamedSharding
  metrics: NamedSharding


@dataclasses.dataclass(frozen=True)
class DataParallel:
  mode: str
  devices: tuple
  # Devices along the ensemble's member axis; 0: a single model, no member
  # axis (the 1-D mesh).
  member_devices: int = 0

  @property
  def num_devices(self) -> int:
    return len(self.devices)

  @property
  def ensemble(self) -> bool:
    return self.member_devices > 0

  @property
  def data_devices(self) -> int:
    """Devices each batch is split over."""
    return self.num_devices // max(self.member_devices, 1)

  @property
  def multi_process(self) -> bool:
    """Several processes: each places its own devices' part of every
    global array (`_place`)."""
    return jax.process_count() > 1

  @property
  def axis_name(self) -> str | None:
    """The collective axis the step and the model name (pmap only)."""
    return AXIS if self.mode == 'pmap' else None

  @functools.cached_property
  def mesh(self) -> jax.sharding.Mesh:
    """Axes of type Auto, named so rather than left to JAX's default (which
    newer JAX moves towards Explicit): XLA's SPMD partitioner places the
    collectives, and the step's code stays free of sharding types."""
    if self.ensemble:
      devices, names = (np.asarray(self.devices).reshape(
          self.member_devices, -1), (MEMBER_AXIS, AXIS))
    else:
      devices, names = np.asarray(self.devices), (AXIS,)
    return jax.sharding.Mesh(
        devices, names,
        axis_types=(jax.sharding.AxisType.Auto,) * len(names))

  @functools.cached_property
  def shardings(self) -> Shardings:
    """The train state split over the members' leading axis (or
    replicated), each batch over the data axis."""
    sharding = lambda *spec: NamedSharding(self.mesh, P(*spec))
    if self.ensemble:
      return Shardings(state=sharding(MEMBER_AXIS), replicated=sharding(),
                       batch_indices=sharding(None, MEMBER_AXIS, AXIS),
                       metrics=sharding(None, MEMBER_AXIS))
    return Shardings(state=sharding(), replicated=sharding(),
                     batch_indices=sharding(None, AXIS), metrics=sharding())

  def place_state(self, tree):
    """The train state (or per-member keys) on the devices: replicated, or
    member i on its row of the mesh."""
    if not self.ensemble:
      return self.replicate(tree)
    return self._place(tree, self.shardings.state)

  def _place(self, tree, sharding):
    if self.multi_process:
      # Every process holds the same values; each places its devices' part.
      def place(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
          # Keys travel as their raw data.
          return jax.random.wrap_key_data(
              place(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding,
                                            lambda index: x[index])
      return jax.tree.map(place, tree)
    return jax.device_put(tree, sharding)

  def for_inference(self) -> 'DataParallel':
    """The mesh over these devices, which inference runs on (pmap's
    devices too: inference needs no collective of its own)."""
    return dataclasses.replace(self, mode='mesh')

  @property
  def eval_batch_sharding(self) -> NamedSharding:
    """Images in batches [M, B, H, W]: each batch split over the data
    axis."""
    return NamedSharding(self.mesh, P(None, AXIS))

  def on_devices(self, tree, sharding):
    """`tree` placed with `sharding`; arrays already there stay (a train
    state on the mesh is not copied)."""
    if all(isinstance(x, jax.Array) and x.sharding.is_equivalent_to(
        sharding, x.ndim) for x in jax.tree.leaves(tree)):
      return tree
    return self._place(tree, sharding)

  def replicate(self, tree):
    """The same values on every device."""
    if self.mode == 'pmap':
      # pmap's layout: a leading device axis, one slice per device.
      stack = lambda x: np.broadcast_to(np.asarray(x),
                                        (self.num_devices, *np.shape(x)))
      return jax.device_put(jax.tree.map(stack, tree),
                            NamedSharding(self.mesh, P(AXIS)))
    return self._place(tree, self.shardings.replicated)

  def unreplicate(self, tree):
    """One copy of replicated values (what checkpoints and eval take).

    pmap's copies are read from the first device's own shard: indexing the
    whole [devices, ...] array (`x[0]`) is, since pmap is built on
    shard_map, a program over every device that gathers the slice."""
    if self.mode == 'pmap':
      return jax.tree.map(lambda x: x.addressable_data(0)[0], tree)
    return tree

  def shard_batch_indices(self, batch_indices):
    """[K, B] global indices -> split over devices along the batch."""
    if self.mode == 'pmap':
      k, b = batch_indices.shape
      per_device = np.asarray(batch_indices).reshape(
          k, self.num_devices, b // self.num_devices).transpose(1, 0, 2)
      return jax.device_put(per_device, NamedSharding(self.mesh, P(AXIS)))
    if self.multi_process:
      return self._place(np.asarray(batch_indices),
                         self.shardings.batch_indices)
    return jax.device_put(batch_indices, self.shardings.batch_indices)

  def to_host(self, tree):
    """Host copies of values on the devices (train state, metrics), whole:
    an ensemble's members spread over several hosts are gathered."""
    if self.multi_process and self.ensemble:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(self.unreplicate(tree))


# What a collective raises on a process whose peer is gone: gloo's TCP pairs
# (CPU hosts), and the coordination service's words for a task that stopped
# sending heartbeats (a barrier, such as a checkpoint's last, fails with
# them): "Task ... heartbeat timeout" (JAX 0.12), "The following tasks are
# unhealthy (stopped sending heartbeats)" (0.10), a task that disconnected
# or restarted.
_LOST_PEER = ('Connection closed by peer', 'Connection reset by peer',
              'heartbeat timeout', 'stopped sending heartbeats',
              'has disconnected from coordination service',
              'The task has restarted', 'Socket closed')


def lost_process(error: BaseException) -> str | None:
  """Which process a multi-process run lost, if `error` (or what it wraps)
  is a collective failing because a peer is gone; None otherwise."""
  if jax.process_count() < 2:
    return None
  texts = []
  while error is not None and len(texts) < 8:
    texts.append(str(error))
    error = error.__cause__ or error.__context__
  text = ' '.join(texts)
  if not any(words in text for words in _LOST_PEER):
    return None
  me, count = jax.process_index(), jax.process_count()
  # The coordination service names the task (the process index).
  named = {int(t) for t in re.findall(r'/task:(\d+)', text)} - {me}
  if len(named) == 1:
    who = f'process {named.pop()}'
  elif count == 2:
    who = f'process {1 - me}'
  else:
    who = f'one of the other {count - 1} processes'
  peer = re.search(r'peer \[([^\]]+)\]', text)
  return (f'process {me} lost {who} of this run'
          + (f' (at {peer.group(1)})' if peer else '')
          + ' in the middle of a collective')


def initialize_distributed(coordinator_address: str = '',
                           num_processes: int = 1, process_id: int = 0,
                           heartbeat_timeout_s: int = 30) -> None:
  """Joins a multi-process run (main.py's `--distributed`).

  With no coordinator, `jax.distributed.initialize()` finds the cluster
  itself (Cloud TPU, SLURM, ...); with `coordinator_address`, the processes
  are named explicitly (several CPU or GPU hosts, or processes on one
  machine). CPU processes reduce across processes with gloo, JAX's default
  since before our lower bound (0.10.2). `heartbeat_timeout_s`: how long a
  process may be silent before the others count it lost (JAX's default is
  100 s): what bounds a wait for a dead process in a barrier.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    return
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_s)
  except ValueError as e:
    # JAX found no cluster manager to ask (Cloud TPU, SLURM, MPI, ...) and
    # was told no coordinator: "coordinator_address should be defined".
    if 'coordinator_address' not in str(e):
      raise
    raise UserError(
        '--distributed found no cluster here (no Cloud TPU, SLURM or MPI '
        'environment to ask); on other machines name the processes: '
        '--coordinator_address=HOST:PORT of process 0, --num_processes=N and '
        '--process_id=I on each, or drop --distributed to train on this '
        'machine alone') from None


def for_inference(num_models: int, member_devices: int = 0,
                  devices=None) -> DataParallel:
  """The mesh a restored run's members are evaluated on: every device of
  the run (default), `member_devices` (0: as many as divide both) on the
  members. Any device count serves: evaluation pads its batches to the
  data axis."""
  devices = tuple(jax.devices() if devices is None else devices)
  if num_models == 1:
    return DataParallel(mode='mesh', devices=devices)
  member_devices = member_devices or math.gcd(num_models, len(devices))
  if len(devices) % member_devices or num_models % member_devices:
    member_devices = math.gcd(num_models, len(devices))
  return DataParallel(mode='mesh', devices=devices,
                      member_devices=member_devices)


def create(config, num_models: int = 1, devices=None) -> DataParallel:
  """The data parallelism the config asks for, for `num_models` members,
  over `devices` (default: every device of the run, or this host's for
  pmap), or a UserError saying why the config cannot train on them."""
  mode = config.get('parallelism', 'mesh')
  if mode not in MODES:
    raise UserError(f'config.parallelism={mode!r} must be one of {MODES}')
  if mode == 'pmap' and jax.process_count() > 1:
    raise UserError('config.parallelism=pmap runs on one host; use mesh for '
                    f'{jax.process_count()} processes')
  if num_models > 1 and mode == 'pmap':
    raise UserError(f'config.num_models={num_models} trains on a device '
                    'mesh; use config.parallelism=mesh')
  if devices is None:
    devices = jax.local_devices() if mode == 'pmap' else jax.devices()
  devices = tuple(devices)
  member_devices = 0
  if num_models > 1:
    member_devices = (config.get('member_devices', 0)
                      or math.gcd(num_models, len(devices)))
    if len(devices) % member_devices or num_models % member_devices:
      raise UserError(
          f'config.member_devices={member_devices} must divide both the '
          f'{len(devices)} devices and num_models={num_models}; use a common '
          f'divisor (0 picks {math.gcd(num_models, len(devices))})')
  data_devices = len(devices) // max(member_devices, 1)
  if config.batch_size % data_devices:
    split = (f'the {data_devices} devices of the data axis '
             f'({len(devices)} devices, {member_devices} on the members)'
             if member_devices else f'the {len(devices)} devices')
    raise UserError(
        f'config.batch_size={config.batch_size} does not divide by {split}; '
        f'use a multiple of {data_devices}')
  return DataParallel(mode=mode, devices=devices,
                      member_devices=member_devices)
