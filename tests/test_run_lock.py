"""One training run per workdir (digits_jax/run_lock.py); the real second
run and the takeover after kill -9: test_reliability.py."""

import json
import os
import signal
import socket
import subprocess

import pytest

from digits_jax import interruption
from digits_jax import run_lock
from digits_jax.errors import UserError


def _write_lock(workdir, **holder):
  holder = {'host': socket.gethostname(), 'pid': os.getpid(),
            'started': '2026-12-01 10:00:00', **holder}
  (workdir / run_lock.LOCK_NAME).write_text(json.dumps(holder))


def _dead_pid() -> int:
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


def test_the_lock_is_held_for_the_run_and_removed_after(tmp_path):
  with run_lock.held(tmp_path):
    holder = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
    assert holder['pid'] == os.getpid()
    assert holder['host'] == socket.gethostname()
    with pytest.raises(UserError, match=f'process {os.getpid()} on '):
      with run_lock.held(tmp_path):
        pass
  assert not (tmp_path / run_lock.LOCK_NAME).exists()


def test_a_live_holder_or_another_hosts_is_refused(tmp_path):
  _write_lock(tmp_path, boot_id=run_lock.boot_id(),  # This process: alive.
              start_ticks=run_lock.start_ticks(os.getpid()))
  with pytest.raises(UserError, match='started 2026-12-01 10:00:00'):
    with run_lock.held(tmp_path):
      pass
  _write_lock(tmp_path, host='another-host', pid=_dead_pid())
  with pytest.raises(UserError, match='on another-host'):
    with run_lock.held(tmp_path):
      pass
  assert (tmp_path / run_lock.LOCK_NAME).exists()  # Left as it was.


@pytest.mark.parametrize('content', ['dead', 'empty'])
def test_a_lock_whose_holder_is_gone_is_taken_over(tmp_path, content):
  if content == 'dead':
    _write_lock(tmp_path, pid=_dead_pid())
  else:  # Killed between creating the file and writing it.
    (tmp_path / run_lock.LOCK_NAME).write_text('')
  with run_lock.held(tmp_path):
    holder = json.loads((tmp_path / run_lock.LOCK_NAME).read_text())
    assert holder['pid'] == os.getpid()
  assert os.listdir(tmp_path) == []


@pytest.fixture
def other_process():
  process = subprocess.Popen(['sleep', '60'])
  yield process.pid
  process.kill()
  process.wait()


def _taken_over(workdir, caplog) -> bool:
  try:
    with run_lock.held(workdir):
      pass
  except UserError:
    return False
  assert 'Took over the workdir lock' in caplog.text
  return True


def test_a_lock_from_an_earlier_life_of_this_pid_is_taken_over(tmp_path,
                                                               caplog):
  """A restarted container: the trainer is pid 1 again, the lock left by
  its previous life names pid 1, which is now this process."""
  mine = run_lock.start_ticks(os.getpid())
  _write_lock(tmp_path, boot_id=run_lock.boot_id(), start_ticks=mine - 100)
  assert _taken_over(tmp_path, caplog)
  _write_lock(tmp_path)  # A lock written before start times were kept.
  assert _taken_over(tmp_path, caplog)


def test_a_pid_another_process_has_now_is_not_the_holder(tmp_path, caplog,
                                                         other_process):
  started = run_lock.start_ticks(other_process)
  _write_lock(tmp_path, pid=other_process, boot_id=run_lock.boot_id(),
              start_ticks=started)
  assert not _taken_over(tmp_path, caplog)  # The holder itself: it runs.
  _write_lock(tmp_path, pid=other_process, boot_id=run_lock.boot_id(),
              start_ticks=started - 1)
  assert _taken_over(tmp_path, caplog)


def test_a_lock_from_before_a_reboot_is_taken_over(tmp_path, caplog,
                                                   other_process):
  _write_lock(tmp_path, pid=other_process, boot_id='an-earlier-boot',
              start_ticks=run_lock.start_ticks(other_process))
  assert _taken_over(tmp_path, caplog)


def test_start_ticks_reads_a_command_name_with_spaces_and_brackets(tmp_path):
  script = tmp_path / 'a) b ('
  script.write_text('#!/bin/sh\nsleep 30\n')
  script.chmod(0o755)
  process = subprocess.Popen([str(script)])
  try:
    with open('/proc/self/stat') as f:
      mine = int(f.read().rsplit(')', 1)[1].split()[19])
    assert run_lock.start_ticks(os.getpid()) == mine
    assert run_lock.start_ticks(process.pid) >= mine
  finally:
    process.kill()
    process.wait()


@pytest.mark.parametrize('moment', ['taken', 'given_back'])
def test_a_stop_signal_while_the_lock_changes_hands_leaves_none(
    tmp_path, monkeypatch, moment):
  """SIGHUP or SIGTERM landing while the lock is written or removed (a
  terminal closed as the run starts): the lock is written whole and then
  removed, and the signal stops the run."""
  def signalled(function):
    def with_a_signal(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGTERM)  # Handled here, at once.
      return function(*args, **kwargs)
    return with_a_signal
  if moment == 'taken':
    monkeypatch.setattr(run_lock.json, 'dump', signalled(json.dump))
  else:
    monkeypatch.setattr(run_lock, '_read', signalled(run_lock._read))
  stop_signal = interruption.StopSignal()
  ran = []
  try:
    with pytest.raises(interruption.Interrupted, match='SIGTERM'):
      with run_lock.held(tmp_path, stop_signal):
        ran.append(True)
  finally:
    stop_signal.close()
  assert ran == ([] if moment == 'taken' else [True])
  assert os.listdir(tmp_path) == []
