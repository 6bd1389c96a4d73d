"""One training run per workdir: a lock file that names its holder.

Two runs writing one folder (a second terminal, a retried job) would
interleave their checkpoints, metrics and events. A training run (process 0
of several hosts) creates `<workdir>/training.lock` exclusively, holding its
host, process id and start time, and removes it when it ends, however it
ends short of SIGKILL. A lock whose holder is gone is taken over with a
warning; one held by a live process, or by another host, is refused in one
line.

A process id alone does not say the holder is gone: after a reboot, or a
container's restart (where the trainer is pid 1 again), the same number
belongs to another process or to this one. So the lock also records the
kernel's boot id and the holder's start time as the kernel counts it
(/proc/PID/stat, clock ticks since boot): the holder runs only if this
host booted the same boot, the pid is not this process's own, and the
process with that pid started when the holder did. On gs:// there is no lock: an object store offers no exclusive create
through the file API used here (README, "Reliability").
"""

import contextlib
import json
import logging
import os
import socket
import time

from digits_jax import paths
from digits_jax.errors import UserError

LOCK_NAME = 'training.lock'

log = logging.getLogger(__name__)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's process: alive.
    pass
  return True


def boot_id() -> str | None:
  """The running kernel's boot id (Linux; unchanged by a container's
  restart, new at each boot); None elsewhere."""
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      return f.read().strip()
  except OSError:
    return None


def start_ticks(pid: int) -> int | None:
  """When process `pid` started, in clock ticks since boot (Linux); None
  where it cannot be read."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      stat = f.read()
    # The fields after the command name, which may hold spaces and ')':
    # the 22nd field of the line, starttime, is the 20th after it.
    return int(stat[stat.rindex(')') + 2:].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def holder_runs(holder: dict, me: dict) -> bool:
  """Whether the run that wrote `holder` may still be running, seen from
  `me` (the lock this process would write)."""
  if holder['host'] != me['host']:
    return True  # Another machine's process cannot be looked at.
  if holder.get('boot_id') and me.get('boot_id') and (
      holder['boot_id'] != me['boot_id']):
    return False  # The machine rebooted since.
  if holder['pid'] == me['pid']:
    # This very process, or an earlier one that had its number (a
    # container restarted: the trainer is pid 1 again).
    return (holder.get('start_ticks') is not None
            and holder.get('start_ticks') == me.get('start_ticks'))
  if not _alive(holder['pid']):
    return False
  started = holder.get('start_ticks')
  now = start_ticks(holder['pid'])
  # Another process has the number now (a reboot, a restarted container).
  return started is None or now is None or started == now


def _read(path: str) -> dict | None:
  try:
    with open(path) as f:
      holder = json.load(f)
    return holder if {'host', 'pid', 'started'} <= set(holder) else None
  except (OSError, ValueError):
    return None


def _acquire(path: str, me: dict) -> None:
  directory = os.path.dirname(path)
  for _ in range(3):  # Another run may take a stale lock first.
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = _read(path)
      if holder is not None and holder_runs(holder, me):
        raise UserError(
            f'{directory} is in use by the training run of process '
            f'{holder["pid"]} on {holder["host"]} (started '
            f'{holder["started"]}); wait for it to end or use another '
            f'--workdir (if that run is gone, delete {path})') from None
      # Its holder is gone (or it was never written whole: a run killed
      # between creating and writing it). Renamed away first, so that of
      # two runs taking it over only one can.
      stale = f'{path}.stale-{me["pid"]}'
      try:
        os.rename(path, stale)
      except FileNotFoundError:
        continue
      os.remove(stale)
      log.warning('Took over the workdir lock of %s, which is no longer '
                  'running.', f'process {holder["pid"]} on {holder["host"]} '
                  f'(started {holder["started"]})' if holder else 'a run')
      continue
    with os.fdopen(fd, 'w') as f:
      json.dump(me, f)
    return
  raise UserError(f'could not take the lock {path}: other runs keep taking '
                  'it; start one run per --workdir')


@contextlib.contextmanager
def held(workdir, stop_signal=None):
  """The workdir's lock, for a training run's whole length (local
  workdirs; on gs:// nothing). `stop_signal` (interruption.StopSignal): a
  stop signal waits while the lock is taken or given back, so that it is
  never left behind half written or after its run."""
  if paths.is_remote(workdir):
    yield
    return
  directory = os.fspath(workdir)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  me = {'host': socket.gethostname(), 'pid': os.getpid(),
        'started': time.strftime('%Y-%m-%d %H:%M:%S'),
        'boot_id': boot_id(), 'start_ticks': start_ticks(os.getpid())}
  uninterrupted = (stop_signal.deferred if stop_signal is not None
                   else contextlib.nullcontext)
  try:
    with uninterrupted():
      _acquire(path, me)
    yield
  finally:
    with uninterrupted():
      if _read(path) == me:
        os.remove(path)
