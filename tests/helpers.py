"""What several test modules share: running the command line (in this
process or in a new one), reading a run's checkpoints back, comparing trees
of float32 values, and launching processes as hosts or without TensorFlow."""

import contextlib
import io
import json
import os
import pkgutil
import socket
import subprocess
import sys
import threading
from unittest import mock

import jax
import numpy as np

from digits_jax import config_checks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'configs', 'tiny.py')

# What the model and preprocessing take from MNIST (recipe.data_record),
# pixel statistics near its own: for tests that build without the data.
MNIST_DATA = {'image_shape': [28, 28, 1], 'num_classes': 10,
              'pixel_mean': 33.3, 'pixel_std': 78.6}


def _python_path(*entries) -> str:
  """`entries`, then this process's PYTHONPATH less the project (where a
  machine's extra packages may be, as on a lent GPU: docs/device.md)."""
  inherited = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
               if p and os.path.abspath(p) != ROOT]
  return os.pathsep.join([*map(str, entries), *inherited])


def env_without_project() -> dict:
  """This process's environment with the project off the path."""
  return dict(os.environ, PYTHONPATH=_python_path())


def _our_deprecations_are_errors() -> str:
  """PYTHONWARNINGS under which a DeprecationWarning or FutureWarning that
  the project's own code triggers is an error, as pyproject.toml's
  filterwarnings make it in the pytest process. The variable takes exact
  module names, not patterns: every module of digits_jax, and `__main__`
  (`python -m digits_jax.main`, a script)."""
  import digits_jax  # pylint: disable=g-import-not-at-top
  modules = ['__main__', 'digits_jax'] + [
      info.name for info in pkgutil.walk_packages(digits_jax.__path__,
                                                  'digits_jax.')]
  return ','.join(f'error::{category}:{module}' for module in modules
                  for category in ('DeprecationWarning', 'FutureWarning'))


def cli_env(devices: int | None = None, **extra) -> dict:
  """The environment of a `digits_jax.main` subprocess: the project on the
  path, the session's compilation cache (conftest.py) inherited, `devices`
  simulated CPU devices (None: one, whatever this process has), and the
  project's own deprecated calls errors."""
  env = dict(os.environ, PYTHONPATH=_python_path(ROOT),
             PYTHONWARNINGS=_our_deprecations_are_errors(), **extra)
  if devices is None:
    env.pop('XLA_FLAGS', None)
  else:
    # XLA:CPU aborts a collective whose devices' threads have not all
    # arrived within 40 s; simulated devices on two cores shared with other
    # tests (pytest-xdist's workers) can be later than that without anything
    # being wrong.
    env['XLA_FLAGS'] = (
        f'--xla_force_host_platform_device_count={devices} '
        '--xla_cpu_collective_call_terminate_timeout_seconds=600')
  return env


def run_cli(*args, devices=None, env=None, timeout=600):
  """`python -m digits_jax.main ARGS` in a new process, as a user runs it."""
  return subprocess.run(
      [sys.executable, '-m', 'digits_jax.main', *args], cwd=ROOT,
      env=env or cli_env(devices), capture_output=True, text=True,
      timeout=timeout, check=False)


class InProcessResult:
  """What `run_main` saw, named as `run_cli`'s subprocess result names it."""

  def __init__(self, returncode: int, stdout: str, stderr: str):
    self.returncode = returncode
    self.stdout = stdout
    self.stderr = stderr


def run_main(*args) -> InProcessResult:
  """The command line's own parsing and `main`, in this process.

  For the checks of what the CLI says about bad input, where a new process
  per case (importing JAX, Flax and TFDS each time) would add nothing:
  the flags are parsed by `main._parse_flags`, as `app.run` does, and
  restored afterwards. An exception other than SystemExit escapes, so a
  traceback fails the test. ml_collections reads the overrides
  (`--config.KEY=V`) from sys.argv, so that is set too.
  """
  from absl.testing import flagsaver  # pylint: disable=g-import-not-at-top
  from digits_jax import main  # pylint: disable=g-import-not-at-top
  # What `main` imports late, imported before the flags are saved: a flag
  # that a module defines (array_record defines some) inside the flagsaver
  # would be gone after it.
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top,unused-import
  from digits_jax import evaluation, export, predict, train  # pylint: disable=g-import-not-at-top,unused-import,g-multiple-import
  argv = ['digits_jax.main', *args]
  stdout, stderr = io.StringIO(), io.StringIO()
  returncode = 0
  with flagsaver.flagsaver(), mock.patch.object(sys, 'argv', argv), \
      contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    try:
      main.main(main._parse_flags(argv))  # pylint: disable=protected-access
    except SystemExit as e:
      returncode = e.code if isinstance(e.code, int) else 1
  return InProcessResult(returncode, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result, *fragments):
  """Exit code 2, no traceback, one `error:` line holding each fragment."""
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-2000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def latest_checkpoint(config, workdir, platform=None):
  """(step, train state) of the latest checkpoint in `workdir`, restored for
  `platform` (default: this process's)."""
  from digits_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import recipe  # pylint: disable=g-import-not-at-top
  platform = platform or platform_lib.current(config.conv_impl)
  config, members = members_lib.resolve(config)
  model, tx = recipe.build(config, platform, MNIST_DATA,
                           traced_keys=members.traced_keys)
  target = members.abstract_train_state(model, tx)
  manager = checkpoint.create_manager(os.path.join(workdir, 'checkpoints'),
                                      2, read_only=True)
  step = manager.latest_step()
  return step, checkpoint.restore_state(manager, step, target)


def plateau_state(opt_state):
  """The optim.PlateauState inside an optimizer state (an ensemble's holds
  one per member, stacked)."""
  from digits_jax import optim  # pylint: disable=g-import-not-at-top
  is_plateau = lambda n: isinstance(n, optim.PlateauState)
  return [n for n in jax.tree.leaves(opt_state, is_leaf=is_plateau)
          if is_plateau(n)][0]


def tiny_final_state(workdir, config_overrides):
  """`latest_checkpoint` of a run of configs/tiny.py with overrides."""
  config = config_checks.load_config('tiny')
  config.update_from_flattened_dict(config_overrides)
  return latest_checkpoint(config, str(workdir))


def assert_same_state(a, b, **tolerance):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tolerance)


def max_difference(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def float_drift(a, b) -> dict[str, float]:
  """How far apart two trees that should hold the same values are, worst leaf.

  'relative': the largest difference over the leaf's largest magnitude.
  'beyond_1e-4': the fraction of the leaf's entries more than 1e-4 apart.
  A few Adam steps from the same start, with float32 summed in another order
  (another device count, vmap's grouped convolutions, another CPU's kernels),
  drift apart by up to ~1e-2 relative on Adam's moments and BatchNorm's
  statistics; the parameters whose gradients are near zero (Adam magnifies
  their last bits into steps of about the learning rate) by up to ~1e-3, a
  few per cent of a leaf at most. A wrong key, data order or member moves
  the moments by ~1 relative and almost all parameters by ~1e-3, beyond
  1e-4. (Relative is no measure for parameters: a bias that starts at zero
  has only its drift to compare with.)"""
  relative, beyond = 0.0, 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    difference = np.abs(x - y)
    scale = max(float(np.max(np.abs(y))), 1e-6)
    relative = max(relative, float(np.max(difference)) / scale)
    beyond = max(beyond, float(np.mean(difference > 1e-4)))
  return {'relative': relative, 'beyond_1e-4': beyond}


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


# How long a two-host run may take before the test that started it kills
# it: a deadlock in a collective (as JAX 0.12.1's, docs/testing.md) then
# fails that test instead of holding the whole suite until CI's limit.
TWO_HOSTS_DEADLINE_S = 600


def launch_two_hosts(args, env=None):
  """Two `digits_jax.main` processes of one CPU device each, joined as the
  two hosts of one run through a coordinator on this machine; both killed
  if still running after TWO_HOSTS_DEADLINE_S (their logs then end, and a
  test reading them fails)."""
  port = free_port()
  processes = [subprocess.Popen(
      [sys.executable, '-m', 'digits_jax.main', *args,
       '--distributed', f'--coordinator_address=127.0.0.1:{port}',
       '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env or cli_env(), stderr=subprocess.PIPE, text=True)
               for i in (0, 1)]
  timer = threading.Timer(TWO_HOSTS_DEADLINE_S,
                          lambda: [p.kill() for p in processes])
  timer.daemon = True
  timer.start()
  return processes


# A sitecustomize.py that hides TensorFlow from the process the way an
# uninstalled package is absent (its import fails and
# `importlib.util.find_spec` answers None, which is how TFDS and etils ask),
# and prints at exit which TensorFlow modules were imported anyway.
HIDE_TENSORFLOW = '''
import atexit, importlib.machinery, sys


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):

  @classmethod
  def find_spec(cls, name, path=None, target=None):
    if name == 'tensorflow' or name.startswith('tensorflow.'):
      return None
    return super().find_spec(name, path, target)


sys.meta_path[:] = [_PathFinderWithoutTensorFlow
                    if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path]
atexit.register(lambda: print(
    'TENSORFLOW MODULES: ' + repr(sorted(
        m for m in sys.modules
        if m == 'tensorflow' or m.startswith('tensorflow.'))),
    file=sys.stderr))
'''


def env_without_tensorflow(site_dir) -> dict:
  """The environment of a subprocess that cannot import TensorFlow;
  `site_dir` receives its sitecustomize.py."""
  with open(os.path.join(site_dir, 'sitecustomize.py'), 'w') as f:
    f.write(HIDE_TENSORFLOW)
  return dict(cli_env(), PYTHONPATH=_python_path(site_dir, ROOT))


def tensorflow_modules(stderr: str) -> list:
  """The TensorFlow modules a HIDE_TENSORFLOW process had imported."""
  lines = [l for l in stderr.splitlines()
           if l.startswith('TENSORFLOW MODULES: ')]
  assert lines, stderr[-2000:]
  return json.loads(lines[-1].split(': ', 1)[1].replace("'", '"'))
