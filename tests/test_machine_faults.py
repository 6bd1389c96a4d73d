"""Faults of the machine, not of the user: a full disk, a read-only folder.

Each ends in one line naming what could not be written, where and why,
with the last complete checkpoint and what to do; nothing already saved is
lost, nothing partial is left holding space, and the same command resumes.
The disks are small tmpfs mounts (CI runs as root); the writes a tmpfs
cannot reach in time get an ENOSPC raised in process at that write.
"""

import contextlib
import errno
import os
import shutil
import subprocess
import time
import uuid

from etils import epath
import jax
import numpy as np
import pytest

from helpers import run_cli, run_main, tiny_final_state

pytestmark = pytest.mark.slow  # Each test trains or evaluates a run.


@contextlib.contextmanager
def small_disk(tmp_path, megabytes: int):
  """A tmpfs of `megabytes` at tmp_path/disk, unmounted afterwards."""
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root (CI runs as root)')
  mount = tmp_path / f'disk-{uuid.uuid4().hex[:6]}'
  mount.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={megabytes}m',
                  'tmpfs', str(mount)], check=True)
  try:
    yield mount
  finally:
    subprocess.run(['umount', '-l', str(mount)], check=False)


def _remount(mount, options: str) -> None:
  subprocess.run(['mount', '-o', f'remount,{options}', str(mount)],
                 check=True)


def _errors(result) -> list[str]:
  return [l for l in result.stderr.splitlines() if l.startswith('error: ')]


def assert_one_line_fault(result, *fragments):
  """Exit code 1, no traceback, nothing after the one `error:` line."""
  assert result.returncode == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  errors = _errors(result)
  print(errors)  # The line as a user sees it, in the test's log.
  assert len(errors) == 1, result.stderr[-3000:]
  assert result.stderr.rstrip().splitlines()[-1] == errors[0]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


def _tiny(data_dir, workdir, *more):
  return ('--config=configs/tiny.py', f'--config.data_dir={data_dir}',
          f'--workdir={workdir}', *more)


def test_a_full_disk_at_a_later_checkpoint_then_the_rerun_resumes_bit_for_bit(
    tmp_path, mnist_data_dir, trained_run):
  """The tiny config's first checkpoint (about 4.3 MB) fits in 7 MB, its
  second does not: one line naming step 40, the disk and step 20, and
  nothing after it (a process of its own: orbax's and TensorStore's
  threads print to the real stderr); the partial folder removed; after
  space is freed the same command resumes from step 20 and ends where the
  uninterrupted run ends, bit for bit."""
  _, straight, _ = trained_run
  with small_disk(tmp_path, 7) as disk:
    workdir = disk / 'run'
    result = run_cli(*_tiny(mnist_data_dir, workdir))
    assert_one_line_fault(
        result, 'cannot write the checkpoint of step 40',
        f'to {workdir}/checkpoints: the disk is full (',
        'MB free there); the last complete checkpoint is step 20; free '
        'space there and rerun the same command, which resumes from it')
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['20']
    _remount(disk, 'size=64m')
    rerun = run_main(*_tiny(mnist_data_dir, workdir))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'Resuming from the checkpoint at step 20' in rerun.stderr
    step_a, state_a = tiny_final_state(workdir, {})
    step_b, state_b = tiny_final_state(straight, {})
    assert step_a == step_b == 40
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_full_disk_at_the_first_checkpoint_leaves_nothing_behind(
    tmp_path, mnist_data_dir):
  with small_disk(tmp_path, 3) as disk:
    workdir = disk / 'run'
    result = run_main(*_tiny(mnist_data_dir, workdir, '--config.num_epochs=1'))
    assert_one_line_fault(
        result, 'cannot write the checkpoint of step 20',
        'the disk is full', 'no checkpoint was saved; free space there and '
        'rerun the same command, which starts afresh')
    assert os.listdir(workdir / 'checkpoints') == []


@pytest.mark.parametrize('name, what', [
    ('metrics.jsonl', 'the metrics'),
    ('eval_test.json', 'eval_test.json'),
])
def test_a_full_disk_at_another_write_is_one_line(
    name, what, tmp_path, mnist_data_dir, monkeypatch):
  """The writes a tmpfs cannot reach in time, refused in process: the
  epoch's metrics (before its checkpoint: nothing saved) and the test
  report after training (the checkpoints saved: --mode=eval writes it)."""
  concrete = type(epath.Path(os.fspath(tmp_path)))
  write_text = concrete.write_text

  def full_at(path, *args, **kwargs):
    if name in os.fspath(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
    return write_text(path, *args, **kwargs)

  monkeypatch.setattr(concrete, 'write_text', full_at)
  workdir = tmp_path / 'run'
  result = run_main(*_tiny(mnist_data_dir, workdir, '--config.num_epochs=1'))
  advice = ('no checkpoint was saved; free space there and rerun the same '
            'command' if name == 'metrics.jsonl' else
            'training is done and its checkpoints are saved; free space '
            'there and run the same command with --mode=eval')
  assert_one_line_fault(result, f'cannot write {what} to {workdir}',
                        'the disk is full', advice)
  # No temporary file left beside it.
  assert not [f for f in os.listdir(workdir) if f.endswith('.tmp')]


def test_eval_predict_and_serve_on_a_read_only_run_do_their_job(
    tmp_path, mnist_data_dir, trained_run):
  """--mode=eval prints its figures and says in one warning line what it
  could not write; predict predicts (exit code 0 both); serve's predictor
  loads the run and answers."""
  config, workdir, report = trained_run
  with small_disk(tmp_path, 64) as disk:
    shutil.copytree(workdir, disk / 'run', ignore=shutil.ignore_patterns(
        'eval_test.json', '*.png'))
    _remount(disk, 'ro')
    common = _tiny(mnist_data_dir, disk / 'run')
    result = run_main(*common, '--mode=eval')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert f'accuracy {report["accuracy"]:.4f}' in result.stderr
    warnings = [l for l in result.stderr.splitlines()
                if 'cannot write' in l]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert ('Warning: cannot write eval_test.json to '
            f'{disk}/run/eval_test.json: the file system is read-only'
            ) in warnings[0]
    digits = tmp_path / 'digits.npy'
    from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    np.save(digits, input_pipeline.load_splits(config).test_images[:3])
    predicted = run_main(*common, '--mode=predict', f'--images={digits}')
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert predicted.stdout.count('digits.npy') == 3, predicted.stdout
    from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
    from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
    from digits_jax import serve  # pylint: disable=g-import-not-at-top
    predictor = serve.Predictor(*members_lib.resolve(config), disk / 'run',
                                platform_lib.current())
    assert len(predictor(np.load(digits)[0])['probabilities']) == 10


class _UnansweredManager:
  """An orbax manager whose bucket never answers a save."""
  directory = epath.Path('gs://digits/run/checkpoints')

  def save(self, *args, **kwargs):
    del args, kwargs
    time.sleep(60)

  def wait_until_finished(self):
    pass


def test_a_checkpoint_to_a_bucket_that_does_not_answer_fails_in_the_deadline(
    monkeypatch):
  """checkpoint.save on a remote run folder gives up at the remote deadline
  with a WriteFailed naming the step and the bucket, whatever the client's
  retries (the stopped emulator of test_cloud_storage usually stops the
  metrics' write first, which `write_atomically` bounds the same way)."""
  from digits_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from digits_jax.errors import WriteFailed  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv('DIGITS_JAX_REMOTE_DEADLINE_S', '1')
  start = time.monotonic()
  with pytest.raises(WriteFailed) as failed:
    checkpoint.save(_UnansweredManager(), 7, {}, {}, None)
  assert time.monotonic() - start < 10
  assert str(failed.value) == (
      'cannot write the checkpoint of step 7 to gs://digits/run/checkpoints: '
      'the bucket did not answer in 1 s')
