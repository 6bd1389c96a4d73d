"""`--mode=compile`: a run's programs compiled for a TPU slice, here, without
one.

libtpu (`pip install -e '.[tpu]'`) describes a TPU topology with no TPU
attached (`jax.experimental.topologies.get_topology_desc`), and XLA's TPU
compiler compiles for its devices on this machine's CPU. The programs are
the run's own, built as a training run on that slice builds them: the
platform's TPU choices (no CPU kernels or compiler options, the scan
rolled, a whole epoch per dispatch, members vmapped), `train.train_program`
with its shardings and donation over the slice's mesh, and the Evaluator's
inference for validation and the test set. Nothing reads data or writes a
run: the arrays are `jax.ShapeDtypeStruct`s carrying their shardings.

What it reports comes from the compiler (`memory_analysis`,
`cost_analysis`), per device (a chip, or a TensorCore where libtpu counts
each as one); the time per step is a roofline estimate from those counts
and the chip's published peaks, never a measurement. What a
compile cannot check: each host placing its part of the data, the
coordination service, writes to gs:// (the two-process CPU tests check
those).
"""

import contextlib
import dataclasses
import json
import logging
import math
import os
import tempfile
import time

import jax
import numpy as np

from digits_jax import members as members_lib
from digits_jax import parallel as parallel_lib
from digits_jax import platform as platform_lib
from digits_jax import train
from digits_jax.errors import UserError

log = logging.getLogger(__name__)

INSTALL = "pip install -e '.[tpu]'"
# Topologies as libtpu names them (GENERATION:CHIPS), a few of each kind.
EXAMPLE_TOPOLOGIES = ('v4:2x2x1', 'v4:2x2x2', 'v5e:2x2', 'v5e:4x4',
                      'v5e:16x16', 'v5p:2x2x1', 'v6e:2x2', 'v6e:4x4')


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU generation's published figures, per chip (Cloud TPU's docs)."""
  name: str
  hbm_bytes: int
  peak_flops: float  # bfloat16 FLOP/s; f32 matmuls run at it (one pass).
  hbm_bandwidth: float  # bytes/s


GIB = 2**30
# By JAX's device_kind, per chip. Where libtpu describes a chip's
# TensorCores as devices of their own (v4's two), each device gets its share
# (`Report.per_device`).
CHIPS = {
    'TPU v4': Chip('v4', 32 * GIB, 275e12, 1228e9),
    'TPU v5 lite': Chip('v5e', 16 * GIB, 197e12, 819e9),
    'TPU v5': Chip('v5p', 95 * GIB, 459e12, 2765e9),
    'TPU v6 lite': Chip('v6e', 32 * GIB, 918e12, 1640e9),
}
# MNIST's sizes, without reading it: the training split before the
# validation hold-out, and the test split.
MNIST_TRAIN, MNIST_TEST = 60_000, 10_000
# What the model and preprocessing take from the data (recipe.data_record):
# MNIST's shape and classes, and the training images' statistics (a compile
# needs only their type).
MNIST_RECORD = {'image_shape': [28, 28, 1], 'num_classes': 10,
                'pixel_mean': 33.32, 'pixel_std': 78.57}


@dataclasses.dataclass
class Program:
  """One compiled program's figures, per device."""
  name: str
  compile_s: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  code_bytes: int
  alias_bytes: int

  @property
  def hbm_bytes(self) -> int:
    """What the program holds in HBM at once: donated arguments (aliased
    to outputs) count once."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes
            + self.temp_bytes + self.code_bytes)


@contextlib.contextmanager
def _quiet_native_stderr():
  """libtpu's own warnings about TPU_ACCELERATOR_TYPE and the worker
  hostnames (written by C++, straight to fd 2) say nothing to a compile
  without a TPU: set aside while the topology is made."""
  try:
    saved = os.dup(2)
  except OSError:
    yield
    return
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def topology(name: str):
  """The devices of TPU topology `name`, or a UserError saying why not."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # libtpu takes /tmp/libtpu_lockfile so that one process at a time drives
  # a TPU; a compile drives none, and two compiles may run side by side.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  try:
    with _quiet_native_stderr():
      described = topologies.get_topology_desc(platform='tpu',
                                               topology_name=name)
  except RuntimeError as e:
    if 'not installed' in str(e) or 'TPU support' in str(e):
      raise UserError(f'--mode=compile needs libtpu, which is not installed: '
                      f'{INSTALL}') from None
    if 'INVALID_ARGUMENT' in str(e) or 'NOT_FOUND' in str(e):
      raise UserError(_unknown_topology(name)) from None
    raise UserError(f'libtpu could not describe --topology={name}: '
                    f'{str(e).splitlines()[0]}') from None
  devices = list(described.devices)
  if devices[0].device_kind not in CHIPS:
    raise UserError(f'--topology={name}: {devices[0].device_kind} is not a '
                    f'chip this mode knows the figures of; use one of '
                    f'{", ".join(c.name for c in CHIPS.values())}')
  return devices


def _unknown_topology(name: str) -> str:
  return (f'--topology={name!r} is not a TPU topology libtpu knows; name it '
          'as GENERATION:CHIPS, e.g. ' + ', '.join(EXAMPLE_TOPOLOGIES))


def _num_train(config) -> int:
  total = min(MNIST_TRAIN, config.max_train_examples or MNIST_TRAIN)
  if not 0 < config.validation_size < total:
    raise UserError(f'config.validation_size={config.validation_size} must '
                    f'be between 1 and {total - 1}')
  return total - config.validation_size


def _num_test(config) -> int:
  return min(MNIST_TEST, config.max_test_examples or MNIST_TEST)


def _abstract(tree, sharding):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      tree)


def _figures(name: str, compile_s: float, compiled) -> Program:
  memory = compiled.memory_analysis()
  return Program(name, compile_s,
                 int(memory.argument_size_in_bytes),
                 int(memory.output_size_in_bytes),
                 int(memory.temp_size_in_bytes),
                 int(memory.generated_code_size_in_bytes),
                 int(memory.alias_size_in_bytes))


def _cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # Older JAX: one per module.
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def _compile(name, function, args):
  start = time.perf_counter()
  compiled = function.lower(*args).compile()
  return compiled, _figures(name, time.perf_counter() - start, compiled)


@dataclasses.dataclass
class Report:
  """What `compile_run` found: the slice, its programs, a step's cost. The
  programs' figures and a step's cost are per device."""
  topology: str
  chip: Chip
  chips: int
  devices: int
  hosts: int
  programs: list  # The run's: the dispatch, validation, test.
  step: Program  # A one-step dispatch, compiled for its cost.
  flops_per_step: float  # Per chip.
  bytes_per_step: float  # Per chip, HBM traffic.
  images_per_step: int  # The whole slice's (all members).

  @property
  def per_device(self) -> Chip:
    """A device's share of its chip (the chip itself, one device a chip)."""
    share = self.devices // self.chips
    chip = self.chip
    return Chip(chip.name, chip.hbm_bytes // share, chip.peak_flops / share,
                chip.hbm_bandwidth / share)

  @property
  def compute_s(self) -> float:
    """A step's FLOPs at the device's peak: the fastest it could be."""
    return self.flops_per_step / self.per_device.peak_flops

  @property
  def step_s(self) -> float:
    """Roofline: the slower of compute at peak and XLA's count of HBM
    traffic at full bandwidth. An estimate, never a measurement: XLA's
    traffic counts each operation's operands, fusion's savings partly
    unseen, so this leans slow; overheads between steps are not in it."""
    return max(self.compute_s,
               self.bytes_per_step / self.per_device.hbm_bandwidth)

  @property
  def images_per_s(self) -> float:
    return self.images_per_step / self.step_s

  def as_json(self) -> dict:
    return {
        'topology': self.topology, 'chip': self.chip.name,
        'chips': self.chips, 'devices': self.devices, 'hosts': self.hosts,
        'hbm_bytes_per_device': self.per_device.hbm_bytes,
        'programs': [{**dataclasses.asdict(p), 'hbm_bytes': p.hbm_bytes}
                     for p in self.programs],
        'flops_per_step_per_device': self.flops_per_step,
        'bytes_per_step_per_device': self.bytes_per_step,
        'compute_bound_step_s': self.compute_s,
        'estimated_step_s': self.step_s,
        'estimated_images_per_s': self.images_per_s,
        'estimated_images_per_s_per_chip': self.images_per_s / self.chips,
        'estimate': 'roofline from XLA cost analysis and published peaks',
        'jax': jax.__version__, 'libtpu': _libtpu_version()}


def _libtpu_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  for name in ('libtpu', 'libtpu-nightly'):
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return 'unknown'


def compile_run(config, members: members_lib.Members,
                topology_name: str) -> Report:
  """Compiles the run's training dispatch, a one-step dispatch (for the
  cost per step: XLA counts a rolled loop's body once) and the validation
  and test inference for `topology_name`; a UserError for anything that
  cannot run there."""
  devices = topology(topology_name)
  if config.get('parallelism', 'mesh') != 'mesh':
    raise UserError('--mode=compile compiles the mesh program; pmap is for '
                    'one host of GPUs: set config.parallelism=mesh')
  data = parallel_lib.create(config, members.num_models, devices=devices)
  platform = platform_lib.Platform('tpu', config.conv_impl)
  num_train = _num_train(config)
  schedule = train.make_schedule(config, members, platform, num_train)
  built = train.build_program(config, members, data, platform, MNIST_RECORD,
                              schedule.total_steps)
  init_key, _, train_key = members.keys()
  state = jax.eval_shape(lambda key: built.init_state(members, key),
                         init_key)
  shardings = data.shardings
  state_sharding = shardings.state if data.ensemble else shardings.replicated
  program = built.update
  image_size = MNIST_RECORD['image_shape'][:2]
  images = jax.ShapeDtypeStruct((num_train, *image_size), np.uint8,
                                sharding=shardings.replicated)
  labels = jax.ShapeDtypeStruct((num_train,), np.int32,
                                sharding=shardings.replicated)
  key = _abstract(jax.eval_shape(lambda: train_key), state_sharding)
  member_axis = (members.num_models,) if members.stacked else ()

  def dispatch(steps: int):
    indices = jax.ShapeDtypeStruct((steps, *member_axis, config.batch_size),
                                   np.int32,
                                   sharding=shardings.batch_indices)
    return (_abstract(state, state_sharding), images, labels, indices, key)

  compiled, figures = _compile(
      f'train dispatch ({schedule.steps_per_dispatch} steps)', program,
      dispatch(schedule.steps_per_dispatch))
  programs, step = [figures], figures
  if schedule.steps_per_dispatch > 1:
    compiled, step = _compile('train step', program, dispatch(1))
  cost = _cost(compiled)
  programs += _inference_programs(config, members, built, state, data,
                                  platform)
  report = Report(
      topology=topology_name, chip=CHIPS[devices[0].device_kind],
      chips=len({tuple(d.coords) for d in devices}), devices=len(devices),
      hosts=len({d.process_index for d in devices}), programs=programs,
      step=step, flops_per_step=float(cost.get('flops', 0.0)),
      bytes_per_step=float(cost.get('bytes accessed', 0.0)),
      images_per_step=config.batch_size * members.num_models)
  hbm = report.per_device.hbm_bytes
  for figures in programs:
    if figures.hbm_bytes > hbm:
      raise UserError(
          f'{figures.name} needs {figures.hbm_bytes / GIB:.2f} GiB of HBM '
          f'per device, {(figures.hbm_bytes - hbm) / GIB:.2f} GiB more than '
          f'a {report.chip.name} device has ({hbm / GIB:.2f} GiB); lower '
          'config.batch_size or the members, or use a larger chip')
  return report


def _inference_programs(config, members, built, state, data, platform):
  """Validation's and the test set's inference, as the Evaluator compiles
  it: every member over the slice's mesh, where training keeps the state,
  each batch split over the data axis and the split padded to whole
  batches."""
  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top
  evaluator = evaluation.Evaluator(built.model, built.preprocess,
                                   config.eval_batch_size, platform, data,
                                   members)
  variables = _abstract(
      jax.eval_shape(lambda s: s.inference_variables(), state),
      data.shardings.state)
  batch = evaluator.batch_size
  programs = []
  for name, n in (('validation', config.validation_size),
                  ('test', _num_test(config))):
    padded = math.ceil(n / batch) * batch
    batches = jax.ShapeDtypeStruct(
        (padded // batch, batch, *MNIST_RECORD['image_shape'][:2]),
        np.uint8, sharding=data.eval_batch_sharding)
    _, figures = _compile(f'{name} inference ({padded} images)',
                          evaluator.program, (variables, batches))
    programs.append(figures)
  return programs


def summary(report: Report) -> str:
  """The report as a user reads it."""
  chip, device = report.chip, report.per_device
  cores = (f' ({report.devices // report.chips} TensorCores a chip, each a '
           'device)' if report.devices > report.chips else '')
  lines = [f'{report.topology}: {report.chips} {chip.name} chips{cores} over '
           f'{report.hosts} host(s), {device.hbm_bytes / GIB:.0f} GiB HBM a '
           f'device (JAX {jax.__version__}, libtpu {_libtpu_version()})']
  for p in report.programs:
    lines.append(
        f'  {p.name:34s} compiled in {p.compile_s:5.1f} s; per device: '
        f'{p.hbm_bytes / 2**20:8.1f} MiB of HBM (arguments '
        f'{p.argument_bytes / 2**20:.1f}, outputs {p.output_bytes / 2**20:.1f}'
        f', temporaries {p.temp_bytes / 2**20:.1f}, code '
        f'{p.code_bytes / 2**20:.1f} MiB)')
  lines.append(
      f'  a training step, per device: {report.flops_per_step / 1e9:.2f} GFLOP,'
      f' {report.bytes_per_step / 2**20:.1f} MiB of HBM traffic')
  lines.append(
      f'  estimated (roofline, not measured): {report.step_s * 1e6:.1f} us a '
      f'step, {report.images_per_s:,.0f} images/s for the slice, '
      f'{report.images_per_s / report.chips:,.0f} per chip (at peak FLOP/s '
      f'alone: {report.compute_s * 1e6:.1f} us)')
  return '\n'.join(lines)


def main(config, members, topology_name: str) -> None:
  """--mode=compile: the summary on stderr, one JSON line on stdout."""
  if not topology_name:
    raise UserError('--mode=compile needs --topology=NAME, e.g. ' +
                    ', '.join(EXAMPLE_TOPOLOGIES[:4]))
  report = compile_run(config, members, topology_name)
  log.info('%s', summary(report))
  print(json.dumps(report.as_json()))
