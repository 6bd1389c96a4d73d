"""--mode=compile: the run's programs compiled for TPU slices on this CPU
(libtpu describes the slice; XLA's TPU compiler compiles for it).

The slow tier needs libtpu (`pip install -e '.[test,tpu]'`; CI's newest end
installs it); without it these tests fail and say so."""

import importlib.util
import json

import numpy as np
import pytest

from helpers import MNIST_DATA, assert_one_line_error, run_main

from digits_jax import config_checks
from digits_jax import members as members_lib
from digits_jax import tpu_compile
from digits_jax.errors import UserError

# The session's persistent compilation cache (conftest.py) stores the TPU
# executables these tests compile in this process, but cannot load a
# compile-only one back: JAX warns and compiles it again. The CLI turns the
# cache off for --mode=compile.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Error reading persistent compilation cache entry:UserWarning')

# tiny's recipe with a batch every slice here divides, one step a dispatch
# where the test needs no more (one program to compile, not two).
TINY = {'batch_size': 48, 'eval_batch_size': 200, 'validation_size': 200,
        'max_test_examples': 400}


@pytest.fixture
def in_process_cli(monkeypatch):
  """run_main for --mode=compile, whose environment changes (JAX_PLATFORMS,
  the cache off) are undone after the test."""
  import os  # pylint: disable=g-import-not-at-top
  for name in ('JAX_PLATFORMS', 'JAX_ENABLE_COMPILATION_CACHE'):
    monkeypatch.setenv(name, os.environ.get(name, ''))
    if not os.environ[name]:
      monkeypatch.delenv(name)
  return run_main


def _config(name='tiny', **overrides):
  config = config_checks.load_config(name)
  config.update_from_flattened_dict({**TINY, **overrides})
  return members_lib.resolve(config)


def _needs_libtpu():
  if importlib.util.find_spec('libtpu') is None:
    pytest.fail("the TPU compile tests need libtpu: pip install -e "
                "'.[test,tpu]' (CI's newest end installs it)")


def _forward_macs(input_size: int) -> int:
  """The improved LeNet's multiply-adds for one image, layer by layer
  ('valid' convolutions, 2x2 pooling)."""
  side = input_size - 4  # conv1 5x5: 1 -> 32.
  macs = side * side * 25 * 1 * 32
  side -= 4  # conv2 5x5: 32 -> 32.
  macs += side * side * 25 * 32 * 32
  side = side // 2 - 2  # pool, conv3 3x3: 32 -> 64.
  macs += side * side * 9 * 32 * 64
  side -= 2  # conv4 3x3: 64 -> 64.
  macs += side * side * 9 * 64 * 64
  features = (side // 2) ** 2 * 64
  return macs + features * 256 + 256 * 128 + 128 * 84 + 84 * 10


@pytest.fixture(scope='module')
def single_on_a_slice():
  """tiny on a 4-chip v5e slice (one host): the report, and its config."""
  _needs_libtpu()
  config, members = _config(steps_per_dispatch=4)
  return config, tpu_compile.compile_run(config, members, 'v5e:2x2')


@pytest.mark.slow
def test_a_run_compiles_for_a_slice_with_its_programs_and_a_rolled_scan(
    single_on_a_slice):
  config, report = single_on_a_slice
  assert (report.chip.name, report.chips, report.devices, report.hosts) == (
      'v5e', 4, 4, 1)
  names = [p.name for p in report.programs]
  assert names == ['train dispatch (4 steps)',
                   'validation inference (200 images)',
                   'test inference (400 images)']
  dispatch = report.programs[0]
  # The platform's TPU choice: the scan rolled, so four steps are about one
  # step's code (unrolled, as on the CPU, they would be about four).
  assert dispatch.code_bytes < 1.5 * report.step.code_bytes
  # The state is donated: aliased to the outputs.
  assert dispatch.alias_bytes > 0.9 * dispatch.output_bytes
  assert all(0 < p.hbm_bytes < report.per_device.hbm_bytes
             for p in report.programs)
  assert 0 < report.step_s and report.images_per_s > 0
  assert report.images_per_step == config.batch_size


@pytest.mark.slow
def test_flops_per_step_agree_with_the_models_count(single_on_a_slice):
  """Per chip, a step is a quarter of the batch (4 data devices): forward
  2 FLOPs a multiply-add, the backward pass twice the forward (both
  gradients; conv1 needs no input gradient), so about 6 x MACs x images.
  The augmentation's warp, BatchNorm, the loss and Adam add a few percent;
  the bounds allow them and XLA's own counting."""
  config, report = single_on_a_slice
  images_per_chip = config.batch_size // report.devices
  analytic = 6 * _forward_macs(config.input_size) * images_per_chip
  assert 0.85 * analytic < report.flops_per_step < 1.5 * analytic, (
      report.flops_per_step / analytic)


@pytest.mark.slow
def test_the_arguments_hbm_is_the_state_and_the_dataset(single_on_a_slice):
  """Per chip, replicated: the train state (parameters, Adam's two moments,
  BatchNorm statistics, the plateau's scalars), the training split after
  the validation hold-out (1,000 of tiny's 1,200 images, and their labels),
  this chip's share of the batch indices and the key. Each array counts at
  its TPU layout's size (small minor dimensions are padded to whole tiles),
  the size the compiler gives that array alone."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
  from jax.sharding import PartitionSpec  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import recipe  # pylint: disable=g-import-not-at-top
  config, report = single_on_a_slice
  devices = tpu_compile.topology('v5e:2x2')
  mesh = jax.sharding.Mesh(np.asarray(devices), ('data',))
  replicated = NamedSharding(mesh, PartitionSpec())

  def on_tpu(shape, dtype, sharding=replicated) -> int:
    alone = jax.jit(lambda x: x).lower(
        jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)).compile()
    return alone.memory_analysis().argument_size_in_bytes

  members = members_lib.Members(seeds=(config.seed,))
  model, tx = recipe.build(config, platform_lib.Platform('tpu'), MNIST_DATA,
                           None, 100, ())
  state = jax.eval_shape(lambda k: members.create_train_state(model, tx, k),
                         members.keys()[0])
  num_train = config.max_train_examples - config.validation_size
  assert num_train == 1000
  key = jax.eval_shape(lambda: members.keys()[2])
  expected = (
      sum(on_tpu(x.shape, x.dtype) for x in jax.tree.leaves(state))
      + on_tpu((num_train, 28, 28), np.uint8) + on_tpu((num_train,), np.int32)
      + on_tpu((4, config.batch_size), np.int32,
               NamedSharding(mesh, PartitionSpec(None, 'data')))
      + on_tpu(key.shape, key.dtype))
  assert report.programs[0].argument_bytes == expected


@pytest.mark.slow
@pytest.mark.parametrize('config_name,topology,overrides', [
    ('ensemble', 'v4:2x2x2', {'num_models': 2}),
    ('sweep', 'v5e:4x4', {'sweep': 'learning_rate=1e-3,2e-3'}),
])
def test_members_compile_for_a_slice_of_several_hosts(config_name, topology,
                                                      overrides):
  """An ensemble and a sweep on topologies of 2 and 4 hosts: the one global
  program each host runs."""
  _needs_libtpu()
  del config_name  # tiny's recipe; the members are what differ.
  config, members = _config(steps_per_dispatch=1, **overrides)
  report = tpu_compile.compile_run(config, members, topology)
  assert report.hosts >= 2
  if topology.startswith('v4'):  # Two TensorCores a chip, each a device.
    assert report.devices == 2 * report.chips
    assert report.per_device.hbm_bytes == report.chip.hbm_bytes // 2
  assert report.images_per_step == config.batch_size * members.num_models
  assert report.flops_per_step > 0
  line = json.dumps(report.as_json())
  assert json.loads(line)['estimate'].startswith('roofline')


@pytest.mark.slow
def test_the_mode_prints_a_summary_and_one_json_line(tmp_path,
                                                    in_process_cli):
  _needs_libtpu()
  result = in_process_cli('--config=configs/tiny.py',
                    *[f'--config.{k}={v}' for k, v in TINY.items()],
                    '--config.steps_per_dispatch=1', '--mode=compile',
                    '--topology=v6e:2x2', f'--workdir={tmp_path}/never')
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  assert (figures['chip'], figures['chips'], figures['devices']) == (
      'v6e', 4, 4)
  assert 'estimated (roofline, not measured)' in result.stderr
  assert not (tmp_path / 'never').exists()  # No workdir, no data.


# One line for what cannot run there, before anything is rented.


@pytest.mark.slow
@pytest.mark.parametrize('overrides,topology,fragments', [
    ({'batch_size': 50}, 'v5e:2x2',
     ('batch_size=50 does not divide by the 4 devices',)),
    ({'num_models': 3, 'member_devices': 2}, 'v5e:2x2',
     ('member_devices=2 must divide both the 4 devices and num_models=3',)),
    ({}, 'v9:2x2', ("--topology='v9:2x2' is not a TPU topology", 'v5e:2x2')),
    ({}, 'bogus', ("--topology='bogus' is not a TPU topology",)),
])
def test_what_cannot_run_there_is_one_line(overrides, topology, fragments,
                                           in_process_cli):
  _needs_libtpu()
  result = in_process_cli('--config=configs/tiny.py',
                    *[f'--config.{k}={v}' for k, v in {**TINY,
                                                        **overrides}.items()],
                    '--mode=compile', f'--topology={topology}')
  assert_one_line_error(result, *fragments)


@pytest.mark.slow
def test_a_program_over_the_chips_hbm_is_one_line_naming_it(monkeypatch):
  _needs_libtpu()
  small = tpu_compile.Chip('v5e', 8 * 2**20, 197e12, 819e9)
  monkeypatch.setitem(tpu_compile.CHIPS, 'TPU v5 lite', small)
  config, members = _config(steps_per_dispatch=1)
  with pytest.raises(UserError) as raised:
    tpu_compile.compile_run(config, members, 'v5e:2x2')
  message = str(raised.value)
  assert message.startswith('train dispatch (1 steps) needs ')
  assert 'more than a v5e device has (0.01 GiB)' in message
  assert 'lower config.batch_size' in message


def test_without_libtpu_the_line_names_the_install(monkeypatch):
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  def not_installed(**kwargs):
    del kwargs
    raise RuntimeError('JAX TPU support not installed; cannot generate TPU '
                       'topology. See https://github.com/jax-ml/jax')

  monkeypatch.setattr(topologies, 'get_topology_desc', not_installed)
  with pytest.raises(UserError, match=r"needs libtpu.*pip install -e '\.\[tpu\]'"):
    tpu_compile.topology('v5e:2x2')


def test_the_mode_needs_a_topology(tmp_path, in_process_cli):
  result = in_process_cli('--config=configs/tiny.py', '--mode=compile',
                    f'--workdir={tmp_path}')
  assert_one_line_error(result, '--mode=compile needs --topology=NAME')


def test_each_chip_names_its_published_figures():
  assert {c.name for c in tpu_compile.CHIPS.values()} == {
      'v4', 'v5e', 'v5p', 'v6e'}
  for chip in tpu_compile.CHIPS.values():
    assert chip.hbm_bytes >= 16 * 2**30 and chip.peak_flops > 1e14
    assert np.isfinite(chip.hbm_bandwidth)
