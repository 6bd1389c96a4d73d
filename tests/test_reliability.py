"""Interruption, resumption and divergence, through the real command line."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import (ROOT, assert_one_line_error, cli_env, run_main,
                     tiny_final_state)

pytestmark = pytest.mark.slow  # Each test runs the command line.


def test_sigterm_mid_run_saves_and_the_rerun_matches_an_uninterrupted_run(
    tmp_path, mnist_data_dir):
  overrides = {'num_epochs': 3}
  args = ['--config=configs/tiny.py', f'--config.data_dir={mnist_data_dir}',
          '--config.num_epochs=3']
  interrupted = str(tmp_path / 'interrupted')
  env = cli_env()
  process = subprocess.Popen(
      [sys.executable, '-m', 'digits_jax.main', *args,
       f'--workdir={interrupted}'], cwd=ROOT, env=env,
      stderr=subprocess.PIPE, text=True)
  log = []
  for line in process.stderr:
    log.append(line)
    if 'epoch 1/3' in line:  # Training is under way: interrupt it.
      process.send_signal(signal.SIGTERM)
      break
  log.extend(process.stderr)
  assert process.wait(timeout=300) == 0, ''.join(log[-30:])
  log = ''.join(log)
  assert 'SIGTERM received' in log and 'Run the same command to resume' in log
  assert 'Test set' not in log  # It stopped before the end.
  stopped_step, _ = tiny_final_state(interrupted, overrides)
  assert 20 <= stopped_step < 60

  # The rerun and the straight run in this process: the signal needed a
  # process of its own, the rest does not.
  rerun = run_main(*args, f'--workdir={interrupted}')
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'Resuming from the checkpoint at step {stopped_step}' in rerun.stderr

  straight = str(tmp_path / 'straight')
  result = run_main(*args, f'--workdir={straight}')
  assert result.returncode == 0, result.stderr[-3000:]

  step_a, state_a = tiny_final_state(interrupted, overrides)
  step_b, state_b = tiny_final_state(straight, overrides)
  assert step_a == step_b == 60
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_divergence_stops_with_the_step_and_saves_nothing_bad(
    tmp_path, mnist_data_dir):
  result = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}',
                    f'--config.data_dir={mnist_data_dir}',
                    '--config.learning_rate=1e30', '--config.l2=0.0',
                    '--config.steps_per_dispatch=1')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and 'non-finite at step' in errors[0], errors
  checkpoints = tmp_path / 'checkpoints'
  assert not checkpoints.exists() or not [
      p for p in os.listdir(checkpoints) if p.isdigit()]


# Runs the trainer with orbax's commit step (the rename of a checkpoint's
# temporary directory, once its files are written) held for the checkpoint of
# step 40, so that the test can kill -9 the process in the middle of writing
# it. Relies on an orbax internal; if that moves, this fails loudly.
_HOLD_SECOND_CHECKPOINT = '''
import os, sys, time
from orbax.checkpoint._src.path import atomicity
commit = atomicity.AtomicRenameTemporaryPath.finalize
async def finalize(self):
  if self._final_path.name == '40':
    open(os.environ['CHECKPOINT_HELD'], 'w').close()
    time.sleep(600)
  return await commit(self)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
from digits_jax import main
main.run()
'''


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path, mnist_data_dir):
  args = ['--config=configs/tiny.py', f'--config.data_dir={mnist_data_dir}',
          '--config.num_epochs=3', f'--workdir={tmp_path / "run"}']
  held = tmp_path / 'held'
  env = cli_env(CHECKPOINT_HELD=str(held))
  log = tmp_path / 'log'
  with open(log, 'w') as stderr:  # A file: a full pipe would block the run.
    process = subprocess.Popen(
        [sys.executable, '-c', _HOLD_SECOND_CHECKPOINT, *args], cwd=ROOT,
        env=env, stderr=stderr)
  deadline = time.monotonic() + 300
  while not held.exists() and process.poll() is None:
    assert time.monotonic() < deadline, 'the second checkpoint never started'
    time.sleep(0.1)
  assert process.poll() is None, log.read_text()[-3000:]
  checkpoints = tmp_path / 'run' / 'checkpoints'
  partial = [p for p in os.listdir(checkpoints) if not p.isdigit()]
  assert partial, os.listdir(checkpoints)  # Step 40, half committed.
  # A second run in the same workdir meanwhile: refused, naming the first.
  second = run_main(*args)
  assert_one_line_error(second, 'is in use by the training run of process '
                        f'{process.pid} on {socket.gethostname()}')
  process.kill()  # SIGKILL: no handler, no cleanup.
  process.wait(timeout=60)
  assert sorted(p for p in os.listdir(checkpoints) if p.isdigit()) == ['20']

  evaluated = run_main(*args, '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'best checkpoint (step 20' in evaluated.stderr

  rerun = run_main(*args)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  # The killed run's lock, left behind, is taken over.
  assert (f'Took over the workdir lock of process {process.pid} '
          in rerun.stderr), rerun.stderr[-3000:]
  assert 'Resuming from the checkpoint at step 20' in rerun.stderr
  assert all(p.isdigit() for p in os.listdir(checkpoints)), (
      os.listdir(checkpoints))  # The partial directory is gone.
  step, _ = tiny_final_state(str(tmp_path / 'run'), {'num_epochs': 3})
  assert step == 60


@pytest.mark.parametrize('closed_at', ['mid-run', 'start-up'])
def test_a_closed_terminal_saves_a_checkpoint_exits_0_and_leaves_no_lock(
    tmp_path, mnist_data_dir, closed_at):
  """The run in a terminal of its own (a pty it controls, as a shell gives
  it), without nohup; the terminal closes mid-run or while it starts:
  SIGHUP, and every write to the terminal fails from then on. It saves
  where it is (mid-run) and exits 0."""
  import pty  # pylint: disable=g-import-not-at-top
  import select  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  master, terminal = pty.openpty()
  # A session of its own whose controlling terminal is the pty, then the
  # trainer in its place (no preexec_fn: a fork of this multithreaded
  # process).
  take_the_terminal = (
      'import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); '
      'os.execv(sys.executable, [sys.executable, "-m", "digits_jax.main", '
      '*sys.argv[1:]])')
  process = subprocess.Popen(
      [sys.executable, '-c', take_the_terminal, '--config=configs/tiny.py',
       f'--config.data_dir={mnist_data_dir}', '--config.num_epochs=3',
       f'--workdir={workdir}'], cwd=ROOT, env=cli_env(), stdin=terminal,
      stdout=terminal, stderr=terminal, start_new_session=True)
  os.close(terminal)
  shown = ''
  wait_for = 'epoch 1/3 step' if closed_at == 'mid-run' else 'Workdir:'
  deadline = time.monotonic() + 300
  while wait_for not in shown and time.monotonic() < deadline:
    if select.select([master], [], [], 1.0)[0]:
      try:
        shown += os.read(master, 65536).decode(errors='replace')
      except OSError:  # The process ended: its side of the terminal closed.
        break
  assert wait_for in shown, shown[-3000:]
  os.close(master)  # The terminal closes: the kernel sends SIGHUP.
  assert process.wait(timeout=300) == 0
  assert not (workdir / 'training.lock').exists()
  if closed_at == 'start-up':
    assert not (workdir / 'checkpoints').exists() or not [
        p for p in os.listdir(workdir / 'checkpoints') if p.isdigit()]
    return
  step, _ = tiny_final_state(workdir, {'num_epochs': 3})
  assert 20 <= step < 60  # Saved where it stopped, not at the end.
  assert sorted(os.listdir(workdir / 'checkpoints')) == sorted(
      p for p in os.listdir(workdir / 'checkpoints') if p.isdigit())
  assert not (workdir / 'training.lock').exists()
  assert not (workdir / 'eval_test.json').exists()


def test_sigterm_during_start_up_exits_0_and_says_nothing_was_saved(
    tmp_path, mnist_data_dir):
  """Before the training loop (loading data, compiling), where there is
  nothing to save yet: one line, exit code 0, no checkpoint."""
  workdir = tmp_path / 'run'
  process = subprocess.Popen(
      [sys.executable, '-m', 'digits_jax.main', '--config=configs/tiny.py',
       f'--config.data_dir={mnist_data_dir}', f'--workdir={workdir}'],
      cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True)
  log = []
  for line in process.stderr:
    log.append(line)
    if 'Workdir:' in line:  # Logged before the data is read.
      process.send_signal(signal.SIGTERM)
      break
  log.extend(process.stderr)
  log = ''.join(log)
  assert process.wait(timeout=300) == 0, log[-3000:]
  # Wherever it landed (a gc callback of JAX's prints what it raises), no
  # traceback, no "Exception ignored".
  assert 'Traceback' not in log and 'Exception ignored' not in log, log[-3000:]
  assert ('SIGTERM received before training began: stopped, no checkpoint '
          'written') in log, log
  checkpoints = workdir / 'checkpoints'
  assert not checkpoints.exists() or not [
      p for p in os.listdir(checkpoints) if p.isdigit()]


def test_a_damaged_latest_checkpoint_is_passed_over_by_eval_and_resume(
    trained_run, tmp_path):
  """One file of the latest checkpoint overwritten with 100 random bytes (a
  partial copy from a bucket, a disk error): today's traceback was
  `UnicodeDecodeError`. Eval uses the next best and says so; the resume
  starts from the newest good one, keeps the damaged one aside and ends
  where an undamaged run ends."""
  config, workdir, _ = trained_run  # configs/tiny.py, 2 epochs.
  run = tmp_path / 'run'
  shutil.copytree(workdir, run)
  args = ['--config=configs/tiny.py', f'--config.data_dir={config.data_dir}',
          f'--workdir={run}']
  _, intact = tiny_final_state(run, {})
  damaged = run / 'checkpoints' / '40' / 'meta' / 'metadata'
  damaged.write_bytes(_random_bytes())

  evaluated = run_main(*args, '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert 'Traceback' not in evaluated.stderr
  assert 'The checkpoint at step 40' in evaluated.stderr
  assert 'best checkpoint (step 20' in evaluated.stderr

  resumed = run_main(*args)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from the checkpoint at step 20' in resumed.stderr
  assert (run / 'damaged_checkpoints' / '40' / 'meta' /
          'metadata').read_bytes() == _random_bytes()
  step, state = tiny_final_state(run, {})
  assert step == 40
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(intact)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _random_bytes():
  return np.random.default_rng(0).bytes(100)


def test_a_rate_far_too_high_stops_in_one_line_instead_of_ending_at_chance(
    tmp_path, mnist_data_dir):
  """learning_rate=1e4: the loss grows to ~1e11 yet stays finite; the run
  used to end with exit 0 at chance accuracy, without a word."""
  result = run_main('--config=configs/tiny.py', f'--workdir={tmp_path}',
                    f'--config.data_dir={mnist_data_dir}',
                    '--config.learning_rate=1e4')
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert 'the training diverged' in errors[0]
  assert 'lower config.learning_rate' in errors[0]
  assert 'Test set' not in result.stderr


def test_eval_predict_export_and_serve_load_the_best_checkpoint_not_the_latest(
    trained_run, tmp_path):
  """A run whose latest checkpoint is not its best (validation fell in its
  last epoch): every mode that loads it takes the best, step 20."""
  import json  # pylint: disable=g-import-not-at-top
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top
  from digits_jax import restore  # pylint: disable=g-import-not-at-top
  from digits_jax import serve  # pylint: disable=g-import-not-at-top
  config, workdir, _ = trained_run  # configs/tiny.py: steps 20 and 40.
  run, only_20 = tmp_path / 'run', tmp_path / 'only_20'
  shutil.copytree(workdir, run)
  shutil.copytree(workdir, only_20)
  shutil.rmtree(only_20 / 'checkpoints' / '40')
  record = run / 'checkpoints' / '40' / 'metrics' / 'metrics'
  metrics = json.loads(record.read_text())
  first = json.loads((run / 'checkpoints' / '20' / 'metrics' /
                      'metrics').read_text())
  metrics['val_accuracy'] = first['val_accuracy'] - 0.05
  record.write_text(json.dumps(metrics))

  platform = platform_lib.current()
  digits = np.random.default_rng(0).integers(0, 256, (4, 28, 28), np.uint8)
  logits = lambda folder: evaluation.restored_logits(restore.restore_best(
      *members_lib.resolve(config), str(folder), platform), config, digits)
  best, latest = logits(only_20), logits(workdir)
  assert np.abs(best - latest).max() > 1e-3  # The two steps differ.
  probabilities = np.exp(best[0]) / np.exp(best[0]).sum(-1, keepdims=True)

  args = ['--config=configs/tiny.py', f'--config.data_dir={config.data_dir}',
          f'--workdir={run}']
  evaluated = run_main(*args, '--mode=eval')
  assert 'best checkpoint (step 20' in evaluated.stderr, evaluated.stderr

  np.save(tmp_path / 'digits.npy', digits)
  predicted = run_main(*args, '--mode=predict',
                       f'--images={tmp_path / "digits.npy"}',
                       f'--output={tmp_path / "p.json"}')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  np.testing.assert_allclose(
      [p['probabilities'] for p in json.loads(
          (tmp_path / 'p.json').read_text())['predictions']],
      probabilities, atol=1e-5)

  exported = run_main(*args, '--mode=export', f'--output={tmp_path / "m.jax"}')
  assert exported.returncode == 0, exported.stderr[-3000:]
  artifact = jax.export.deserialize(bytearray((tmp_path / 'm.jax').read_bytes()))
  np.testing.assert_allclose(np.asarray(artifact.call(digits)), probabilities,
                             atol=1e-5)

  predictor = serve.Predictor(*members_lib.resolve(config), str(run), platform)
  assert predictor.step == 20
  np.testing.assert_allclose(predictor(digits[0])['probabilities'],
                             probabilities[0], atol=1e-5)
