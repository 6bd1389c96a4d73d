"""Run folders and data on any filesystem orbax and TFDS support.

Workdirs, `data_dir` and `--output` may be local paths or URIs such as
`gs://bucket/run`: everything the trainer writes goes through one path type,
`etils.epath.Path` (local files, or fsspec's gcsfs and friends for URIs;
TensorFlow's gfile where TensorFlow is installed), and orbax writes the
checkpoint arrays through TensorStore, which reads the same URIs.
"""

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
import uuid

from etils import epath

from digits_jax.errors import UserError
from digits_jax.errors import WriteFailed

# How long the first look at a remote workdir may take before the run gives
# up with one line: client libraries retry a dead network or a refused
# credential for many minutes. DIGITS_JAX_REMOTE_DEADLINE_S sets another
# (a slow link; the tests' unreachable bucket).
REMOTE_DEADLINE_S = 60
DEADLINE_VARIABLE = 'DIGITS_JAX_REMOTE_DEADLINE_S'


def remote_deadline_s() -> float:
  value = os.environ.get(DEADLINE_VARIABLE, '')
  if not value:
    return REMOTE_DEADLINE_S
  try:
    deadline = float(value)
  except ValueError:
    deadline = -1.0
  if not deadline > 0:
    raise UserError(f'{DEADLINE_VARIABLE}={value!r} must be a positive number '
                    'of seconds')
  return deadline


def is_remote(path) -> bool:
  return '://' in os.fspath(path)


def resolve(path: str) -> epath.Path:
  """A user's path: a URI as is, a local path absolute (`~` expanded)."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(os.path.abspath(os.path.expanduser(path)))


# A write the machine refused, by errno and by the words libraries that
# wrap it use (TensorStore's RESOURCE_EXHAUSTED for orbax's arrays).
_FULL = 'the disk is full'
_FAULTS_BY_ERRNO = {errno.ENOSPC: _FULL,
                    errno.EDQUOT: 'the disk quota is used up',
                    errno.EROFS: 'the file system is read-only',
                    errno.EACCES: 'permission denied',
                    errno.EPERM: 'permission denied'}
_FAULTS_BY_TEXT = (('No space left on device', _FULL),
                   ('RESOURCE_EXHAUSTED', _FULL),
                   ('Disk quota exceeded', 'the disk quota is used up'),
                   ('Read-only file system', 'the file system is read-only'),
                   ('Permission denied', 'permission denied'))


def write_fault(error: BaseException) -> str | None:
  """Why the machine refused a write, as a user reads it, if `error` (or an
  error it wraps) is such a refusal; None for anything else."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _FAULTS_BY_ERRNO:
      return _FAULTS_BY_ERRNO[error.errno]
    fault = write_fault_in_text(str(error))
    if fault:
      return fault
    error = error.__cause__ or error.__context__
  return None


def write_fault_in_text(text: str) -> str | None:
  """`write_fault` for a message alone (a library's log line)."""
  for words, fault in _FAULTS_BY_TEXT:
    if words in text:
      return fault
  return None


def with_free_space(fault: str, path) -> str:
  """`fault`, and for a full local disk the space free there now."""
  fault = fault.split(' (')[0]
  return fault + free_space(path) if fault == _FULL else fault


def free_space(path) -> str:
  """' (N MB free there)' for a local path, '' for a URI."""
  if is_remote(path):
    return ''
  folder = os.fspath(path)
  while folder and not os.path.exists(folder):
    folder = os.path.dirname(folder)
  try:
    free = shutil.disk_usage(folder or '/').free
  except OSError:
    return ''
  return f' ({free / 2**20:.1f} MB free there)'


@contextlib.contextmanager
def writing(what: str, path):
  """Turns the machine's refusal of a write inside the block (a full disk,
  a read-only folder, no permission) into a WriteFailed naming `what`,
  `path` and why, with the free space for a full local disk. Every file the
  trainer writes goes through here (`write_atomically`, checkpoint.save,
  the TensorBoard events)."""
  try:
    yield
  except WriteFailed:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    fault = write_fault(e)
    if fault is None:
      raise
    raise WriteFailed(what, path, with_free_space(fault, path)) from None


def write_atomically(path: epath.Path, data: str | bytes,
                     what: str | None = None) -> None:
  """Writes the whole file, so that a crash leaves the previous version: a
  temporary file beside it, renamed into place (on object stores one
  upload is already all or nothing). A refused write is a WriteFailed
  naming `what` (default: the file's name) and leaves no temporary file."""
  write = lambda p: (p.write_bytes if isinstance(data, bytes) else
                     p.write_text)(data)
  if is_remote(path):
    write_remote(what or path.name, path, lambda: write(path))
    return
  with writing(what or path.name, path):
    temporary = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
    try:
      write(temporary)
      temporary.replace(path)
    finally:
      if temporary.exists():
        temporary.unlink()


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


# Client libraries that log each failed retry with its traceback; while a
# remote path is first looked at, the one line below says it instead.
_RETRYING_LOGGERS = ('gcsfs', 'fsspec', 's3fs', 'google')


class _NoAnswer(Exception):
  """The call had not answered when the deadline passed."""


def _within_deadline(function, description: str, deadline_s: float):
  """`function()` run in a daemon thread: its value, what it raised, or
  _NoAnswer when `deadline_s` passes first.

  Left to its retries when the deadline passes: a process that has said
  its one line exits then, rather than waiting for a client library to give
  up (a pool's worker thread would be joined at exit)."""
  loggers = [logging.getLogger(name) for name in _RETRYING_LOGGERS]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(logging.CRITICAL)
  outcome = {}
  answered = threading.Event()

  def call():
    try:
      outcome['value'] = function()
    except Exception as e:  # pylint: disable=broad-exception-caught
      outcome['error'] = e
    finally:
      answered.set()

  threading.Thread(target=call, name=f'deadline: {description}',
                   daemon=True).start()
  try:
    if not answered.wait(deadline_s):
      raise _NoAnswer()
    if 'error' in outcome:
      raise outcome['error']
    return outcome['value']
  finally:
    if answered.is_set():
      # Else the abandoned call is still retrying: its loggers stay quiet,
      # or each retry would print its traceback under the one line.
      for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def call_with_deadline(function, description: str,
                       deadline_s: float | None = None):
  """`function()`, or a UserError naming `description` if it raises or has
  not answered within `deadline_s` (default: `remote_deadline_s()`): the
  first look at a remote path, where a wrong name or credential is the
  user's to fix."""
  if deadline_s is None:
    deadline_s = remote_deadline_s()
  try:
    return _within_deadline(function, description, deadline_s)
  except _NoAnswer:
    raise UserError(
        f'{description}: no answer in {deadline_s:.0f} s; check the bucket '
        'name, the network and the credentials (gcloud auth '
        'application-default login)') from None
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise UserError(f'{description}: {_first_line(e)}; check the path '
                    'and the credentials') from None


def write_remote(what: str, path, write) -> None:
  """`write()` of `what` to a remote `path` within the remote deadline: a
  bucket that stops answering mid-run (or refuses) is a WriteFailed."""
  deadline_s = remote_deadline_s()
  try:
    _within_deadline(write, f'writing {what}', deadline_s)
  except _NoAnswer:
    raise WriteFailed(what, path, f'the bucket did not answer in '
                      f'{deadline_s:.0f} s') from None
  except WriteFailed:
    raise
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise WriteFailed(what, path, f'the bucket refused it ({_first_line(e)})'
                      ) from None


STANDARD_OUTPUT = '-'
# Paths that name a stream this process already has open: written through
# it, never reopened (which would truncate what was printed there before)
# and never renamed over (which would replace the link itself).
_OPEN_STREAMS = {'/dev/stdout': 1, '/dev/stderr': 2}
_FD_PATH = re.compile(r'^/(?:dev/fd|proc/self/fd)/(\d+)$')


def _open_descriptor(path: str) -> int | None:
  """The descriptor `path` names, following links (a user's link to
  /dev/stdout too); None for any other path."""
  for _ in range(8):
    if path in _OPEN_STREAMS:
      return _OPEN_STREAMS[path]
    match = _FD_PATH.match(path)
    if match:
      return int(match.group(1))
    if not os.path.islink(path):
      return None
    path = os.path.join(os.path.dirname(path), os.readlink(path))
  return None


def _write_stream(fd: int | None, data: str | bytes, description: str
                  ) -> None:
  """Writes `data` whole to standard output (`fd` None: through Python's
  sys.stdout, wherever it points) or to the open descriptor `fd`, after
  what Python has buffered for it."""
  try:
    if fd is None:
      if isinstance(data, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
      else:
        sys.stdout.write(data)
      sys.stdout.flush()
      return
    for stream in (sys.stdout, sys.stderr):
      stream.flush()
    view = memoryview(data.encode() if isinstance(data, str) else data)
    while view:
      view = view[os.write(fd, view):]
  except OSError as e:
    raise _unwritable(description, e) from None


def _unwritable(description: str, error: OSError) -> UserError:
  return UserError(f'{description} ({error.strerror or error}); choose a '
                   'writable path')


def write_output(output: str, data: str | bytes, *,
                 create_parents: bool = False) -> epath.Path | str:
  """Writes a file the user named with `--output` (a local path or a URI);
  one UserError line if it cannot be written, within the remote deadline.

  '-' is standard output; a device, a pipe or /dev/stdout is written
  directly, in place; a symbolic link to a file has its target replaced
  atomically and stays a link. Returns where it went."""
  if output == STANDARD_OUTPUT:
    _write_stream(None, data, 'cannot write --output=- (standard output)')
    return 'standard output'
  path = resolve(output)
  description = f'cannot write --output={path}'
  if is_remote(path):
    call_with_deadline(lambda: write_atomically(path, data), description)
    return path
  fd = _open_descriptor(os.fspath(path))
  if fd is not None:
    _write_stream(fd, data, description)
    return path
  local = os.fspath(path)
  if os.path.exists(local) and not os.path.isfile(local):
    if os.path.isdir(local):
      raise UserError(f'--output={path} is a directory; name a file in it')
    # A device or a named pipe: written in place, as `> path` would.
    try:
      with open(local, 'wb') as f:
        f.write(data.encode() if isinstance(data, str) else data)
    except OSError as e:
      raise _unwritable(description, e) from None
    return path
  if os.path.islink(local):
    path = epath.Path(os.path.realpath(local))  # The link stays a link.
  try:
    if create_parents:
      path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
  except OSError as e:
    raise _unwritable(description, e) from None
  except WriteFailed as e:
    raise UserError(f'{description} ({e.fault}); choose a writable path'
                    ) from None
  return path


def prepare_workdir(workdir: str, *, must_exist: bool) -> epath.Path:
  """Resolves `--workdir`: for training, creates it and checks that it can be
  written; for evaluation, checks that it exists. One UserError line
  otherwise, within a minute for an unreachable bucket."""
  path = resolve(workdir)
  if must_exist:
    exists = (call_with_deadline(path.exists, f'cannot read --workdir={path}')
              if is_remote(path) else path.exists())
    if not exists:
      raise UserError(f'--workdir={path} does not exist; point it at a '
                      'training run')
    return path
  if is_remote(path):
    def probe():
      path.mkdir(parents=True, exist_ok=True)
      marker = path / f'.write_check.{uuid.uuid4().hex}'
      marker.write_text('')
      marker.unlink()
    call_with_deadline(probe, f'cannot write to --workdir={path}')
    return path
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create --workdir={path} ({e.strerror}); '
                    'choose a writable directory') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f'--workdir={path} is not writable; choose another')
  return path
