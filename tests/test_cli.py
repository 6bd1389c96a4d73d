"""The command line: end to end as a user runs it, and what it says about
bad input.

What the CLI says to each bad value is checked in this process
(`helpers.run_main`: its own flag parsing and `main`); a few cases run as
real processes too, for the exit code a shell sees and the absence of a
traceback on stderr.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import (ROOT, TINY, assert_one_line_error, env_without_project,
                     run_cli, run_main)

from digits_jax import config_checks
from digits_jax import parallel
from digits_jax.errors import UserError


@pytest.mark.slow
def test_train_then_eval_from_the_command_line(cli_run, tmp_path):
  workdir, common, train_result = cli_run
  assert 'epoch 1/1' in train_result.stderr
  assert 'images/s' in train_result.stderr
  with open(os.path.join(workdir, 'eval_test.json')) as f:
    trained = json.load(f)
  # Evaluated again into a copy, so that the session's run stays as it was.
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  os.remove(copy / 'eval_test.json')
  result = run_cli(*common, f'--workdir={copy}', '--mode=eval')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Test set (500 images)' in result.stderr
  with open(copy / 'eval_test.json') as f:
    evaluated = json.load(f)
  assert evaluated['accuracy'] == trained['accuracy']
  assert evaluated['loss'] == trained['loss']


@pytest.mark.slow
def test_a_run_prints_little_besides_its_epoch_lines(cli_run):
  """Libraries' INFO logs (orbax's ~20 lines per checkpoint, TFDS, JAX)
  stay off by default; the trainer says what it does in a few lines."""
  _, _, result = cli_run
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  epoch_lines = [l for l in lines if ' epoch 1/1 step ' in l]
  assert len(epoch_lines) == 1, result.stderr[-3000:]
  others = [l for l in lines if l not in epoch_lines]
  assert len(others) <= 8, '\n'.join(others)
  # TFDS's notice that Pillow, not OpenCV, decodes the PNGs is not for users.
  assert 'OpenCV' not in result.stderr


@pytest.mark.parametrize('override, fragments', [
    ('--config.no_such_key=1', ['no_such_key']),
    ('--config.model=resnet', ["config.model='resnet'", 'improved_lenet']),
    ('--config.batch_size=0', ['config.batch_size=0', 'positive']),
    ('--config.num_epochs=-3', ['config.num_epochs=-3', 'positive']),
    ('--config.input_size=30', ['config.input_size=30']),
    ('--config.learning_rate=-1.0', ['config.learning_rate']),
    ('--config.batch_size=abc', ['config.batch_size', 'abc']),
    ('--config.dropout_rate=1.5', ['config.dropout_rate=1.5', '[0, 1)']),
    ('--config.zoom_range=-0.1', ['config.zoom_range=-0.1', '[0, 1)']),
    ('--config.adam_b2=1.0', ['config.adam_b2=1.0', '[0, 1)']),
    ('--config.lr_schedule=cosine', ["config.lr_schedule='cosine'",
                                     'onecycle']),
    ('--config.dataset=cifar10', ['dataset']),
    ('--config.steps_per_dispatch=-2', ['config.steps_per_dispatch=-2',
                                        'whole epoch']),
    ('--config.compute_dtype=float16', ["config.compute_dtype='float16'"]),
    ('--config.augment=maybe', ['config.augment', 'maybe']),
    ('--config.bag_fraction=0.0', ['config.bag_fraction=0.0', '(0, 1]']),
    ('--config.bag_fraction=1.5', ['config.bag_fraction=1.5', '(0, 1]']),
    ('--config.elastic_alpha=-1.0', ['config.elastic_alpha=-1.0',
                                     'non-negative']),
    ('--config.elastic_sigma=0.0', ['config.elastic_sigma=0.0', 'positive']),
    ('--config.num_models=0', ['num_models=0 must be a positive']),
    ('--config.num_models=-2', ['num_models=-2 must be a positive']),
    # How a process joins a multi-host run is not the recipe's: flags.
    ('--config.distributed=True', ['now a flag of its own', '--distributed']),
    ('--coordinator_address=10.0.0.1:1234', ['add --distributed']),
    ('--process_id=2', ['--process_id must be below --num_processes']),
])
def test_bad_config_values_fail_in_one_line(tmp_path, override, fragments):
  result = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}/w',
                    override)
  assert_one_line_error(result, *fragments)
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.slow
def test_a_bad_value_is_one_line_and_exit_code_2_in_a_real_process(tmp_path):
  result = run_cli('--config=configs/tiny.py', f'--workdir={tmp_path}/w',
                   '--config.dropout_rate=1.5', timeout=120)
  assert_one_line_error(result, 'config.dropout_rate=1.5', '[0, 1)')
  assert not os.path.exists(tmp_path / 'w')


@pytest.mark.parametrize('body, fragments', [
    # Derived from a base config: ConfigDict itself refuses the type.
    ('config = tiny["get_config"]()\n  config.learning_rate = "0.1"',
     ['learning_rate', 'str']),
    # A config of its own making: validation names the field.
    ('values = tiny["get_config"]().to_dict()\n  values["batch_size"] = 64.5\n'
     '  config = ml_collections.ConfigDict(values)',
     ['config.batch_size=64.5', 'integer']),
    ('values = tiny["get_config"]().to_dict()\n  values["augment"] = 1\n'
     '  config = ml_collections.ConfigDict(values)',
     ['config.augment=1', 'True or False']),
    # What ml_collections lets through, checked against the defaults: a
    # misspelt key a derived file adds, a key it drops, None, True for an
    # integer.
    ('config = tiny["get_config"]()\n  config.bath_size = 32',
     ['config.bath_size is not a key', 'configs/improved.py']),
    ('config = tiny["get_config"]()\n  del config["l2"]',
     ['lacks config.l2']),
    ('config = tiny["get_config"]()\n  config.l2 = None',
     ['config.l2=None must be a number']),
    ('config = tiny["get_config"]()\n  config.batch_size = True',
     ['config.batch_size=True must be an integer']),
    # Errors of the file's own code, whatever their type, named with file
    # and line; the AttributeError and KeyError must not read as an unknown
    # --config.KEY override.
    ('config = tiny["get_config"]().get_confg()',
     ['bad_config.py', 'line 5', 'AttributeError', 'get_confg']),
    ('config = tiny["get_config"]()\n  config.batch_size = config.bach_size',
     ['bad_config.py', 'line 6', 'AttributeError', 'bach_size']),
    ('config = {}["batch_size"]',
     ['bad_config.py', 'line 5', 'KeyError', 'batch_size']),
    ('config = undefined_name',
     ['bad_config.py', 'line 5', 'NameError', 'undefined_name']),
    ('config = (', ['bad_config.py', 'line 5', 'SyntaxError']),
])
def test_config_file_that_fails_fails_in_one_line(tmp_path, body, fragments):
  path = tmp_path / 'bad_config.py'
  # Built on tiny.py the way the derived configs build on theirs: by path.
  path.write_text(f'import ml_collections\nimport runpy\ntiny = runpy.run_path('
                  f'{TINY!r})\ndef get_config():\n  {body}\n  return config\n')
  result = run_main(f'--config={path}', f'--workdir={tmp_path}/w')
  assert_one_line_error(result, *fragments)


@pytest.mark.slow
def test_the_config_files_work_from_any_directory(tmp_path):
  """configs/ is not installed as a package: fast.py finds improved.py
  beside it, from a directory that is not the project's."""
  env = env_without_project()
  result = subprocess.run(
      [sys.executable, '-m', 'digits_jax.main',
       f'--config={os.path.join(ROOT, "configs", "fast.py")}',
       f'--workdir={tmp_path}/w', '--config.batch_size=0'],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
      check=False)
  # The config loaded (its values were checked), then the bad value stopped it.
  assert_one_line_error(result, 'config.batch_size=0')
  assert subprocess.run([sys.executable, '-c', 'import configs'], cwd=tmp_path,
                        env=env, capture_output=True,
                        check=False).returncode != 0


def test_missing_config_file_fails_in_one_line(tmp_path):
  result = run_main('--config=configs/no_such_config.py',
                    f'--workdir={tmp_path}/w')
  assert_one_line_error(result, 'no_such_config.py')


def test_unwritable_workdir_fails_in_one_line(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  result = run_main('--config=configs/tiny.py', f'--workdir={blocker}/run')
  assert_one_line_error(result, 'workdir')
  assert blocker.read_text() == 'not a directory'


def test_eval_without_a_run_fails_in_one_line(tmp_path):
  result = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}',
                    '--mode=eval')
  assert_one_line_error(result, 'no checkpoints')


@pytest.mark.slow  # The session's trained run.
@pytest.mark.parametrize('overrides, fragments', [
    (['--config.model=lenet5', '--config.dropout_rate=0.0'],
     ["model='improved_lenet'", 'lenet5']),
    (['--config.lr_schedule=onecycle'], ["lr_schedule='plateau'",
                                         'onecycle']),
])
def test_checkpoint_of_another_setup_fails_and_keeps_it(cli_run, overrides,
                                                        fragments):
  workdir, common, _ = cli_run
  checkpoints = os.path.join(workdir, 'checkpoints')
  before = sorted(os.listdir(checkpoints))
  result = run_main(*common, *overrides)
  assert_one_line_error(result, *fragments)
  assert sorted(os.listdir(checkpoints)) == before


@pytest.mark.slow  # The session's trained run.
def test_a_single_model_checkpoint_is_refused_by_an_ensemble_config(cli_run):
  _, common, _ = cli_run
  result = run_main(*common, '--config.num_models=2', '--mode=eval')
  assert_one_line_error(result, 'written for num_models=1',
                        'asks for num_models=2')


@pytest.mark.parametrize('overrides, devices, message', [
    ({'batch_size': 50}, 8, 'batch_size=50 does not divide by the 8 devices'),
    ({'num_models': 2, 'member_devices': 3}, 8,
     'member_devices=3 must divide both the 8 devices and num_models=2'),
    ({'num_models': 2, 'parallelism': 'pmap'}, 2,
     'num_models=2 trains on a device mesh'),
    ({'num_models': 4, 'member_devices': 2}, 8,
     'batch_size=50 does not divide by the 4 devices of the data axis'),
])
def test_a_config_that_cannot_use_the_devices_is_refused(overrides, devices,
                                                         message):
  """parallel.create, for device counts this process does not have (it
  only counts them); the real 8-device case through the CLI is below."""
  config = config_checks.load_config('tiny')
  config.update(overrides)
  with pytest.raises(UserError, match=message.replace('(', r'\(')):
    parallel.create(config, config.num_models, devices=[object()] * devices)


@pytest.mark.slow
def test_batch_that_does_not_divide_by_the_devices_is_refused(tmp_path):
  result = run_cli('--config=configs/tiny.py', f'--workdir={tmp_path}',
                   '--config.batch_size=50', devices=8, timeout=300)
  assert_one_line_error(result,
                        'batch_size=50 does not divide by the 8 devices')


def test_a_bad_remote_deadline_is_one_line(monkeypatch):
  monkeypatch.setenv('DIGITS_JAX_REMOTE_DEADLINE_S', 'soon')
  result = run_main('--config=configs/tiny.py', '--workdir=gs://digits/run')
  assert_one_line_error(result, "DIGITS_JAX_REMOTE_DEADLINE_S='soon'",
                        'positive number of seconds')


# Runs the CLI as `python -m digits_jax.main ARGS` and prints at exit which
# heavy libraries it imported.
_HEAVY_IMPORTS = '''
import atexit, runpy, sys
atexit.register(lambda: print('HEAVY: ' + repr(sorted(
    m for m in sys.modules
    if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax',
                           'tensorflow_datasets'))), file=sys.stderr))
sys.argv = ['digits_jax.main'] + sys.argv[1:]
runpy.run_module('digits_jax.main', run_name='__main__')
'''


@pytest.mark.slow
@pytest.mark.parametrize('args', [
    ['--help'],
    ['--config=configs/tiny.py', '--config.batch_size=0'],
    ['--config=configs/fast.py', '--config.model=resnet'],
])
def test_help_and_a_bad_value_import_no_jax(args, tmp_path):
  """`--help` and a config error answer without importing JAX, Flax or TFDS
  (seconds each): config_checks.py holds the names a config chooses
  among."""
  result = subprocess.run(
      [sys.executable, '-c', _HEAVY_IMPORTS, *args,
       f'--workdir={tmp_path}/w'], cwd=ROOT, env=env_without_project(),
      capture_output=True, text=True, timeout=60, check=False)
  assert 'HEAVY: []' in result.stderr, result.stderr[-2000:]
  if args != ['--help']:
    assert result.returncode == 2, result.stderr[-2000:]


@pytest.mark.slow
def test_distributed_without_a_cluster_is_one_line(tmp_path):
  """In a process of its own: JAX joins a cluster only before its first
  computation, which this process's other tests have made."""
  result = run_cli('--config=configs/tiny.py', f'--workdir={tmp_path}',
                   '--distributed', timeout=120)
  assert_one_line_error(result, '--distributed found no cluster',
                        '--coordinator_address=HOST:PORT')


# What a barrier or a collective raises when a peer is gone, as each JAX
# end words it (strings of jaxlib's coordination service).
LOST_PEER_ERRORS = {
    'heartbeat (0.12)': 'INTERNAL: Barrier failed because: UNAVAILABLE: Task '
                        '/job:jax_worker/replica:0/task:2 heartbeat timeout. '
                        'This indicates that the remote task has failed, got '
                        'preempted, or crashed unexpectedly.',
    'heartbeat (0.10)': 'UNAVAILABLE: The following tasks are unhealthy '
                        '(stopped sending heartbeats):\n/job:jax_worker/'
                        'replica:0/task:2\nThe tasks have crashed.',
    'disconnected': 'Task /job:jax_worker/replica:0/task:2 has disconnected '
                    'from coordination service.',
    'gloo': 'Gloo all-reduce failed: Connection closed by peer '
            '[10.0.0.2]:5000',
}


@pytest.mark.parametrize('text', list(LOST_PEER_ERRORS.values()),
                         ids=list(LOST_PEER_ERRORS))
def test_each_wording_of_a_lost_peer_names_it(monkeypatch, text):
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 4)
  monkeypatch.setattr(parallel.jax, 'process_index', lambda: 0)
  try:
    raise RuntimeError('checkpoint save failed') from RuntimeError(text)
  except RuntimeError as e:
    lost = parallel.lost_process(e)
  assert lost is not None and lost.startswith('process 0 lost ')
  if 'task:2' in text:
    assert 'lost process 2 of this run' in lost
  else:
    assert 'one of the other 3 processes' in lost and '10.0.0.2' in lost
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 1)
  assert parallel.lost_process(RuntimeError(text)) is None
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 4)
  assert parallel.lost_process(RuntimeError('out of memory')) is None
