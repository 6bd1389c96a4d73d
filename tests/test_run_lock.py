"""One training run per workdir (digits_jax/run_lock.py); the real second
run and the takeover after kill -9: test_reliability.py."""

import json
import os
import socket
import subprocess

import pytest

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
  _write_lock(tmp_path)  # This process: alive.
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
