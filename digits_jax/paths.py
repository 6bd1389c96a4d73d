"""Run folders and data on any filesystem orbax and TFDS support.

Workdirs, `data_dir` and `--output` may be local paths or URIs such as
`gs://bucket/run`: everything the trainer writes goes through one path type,
`etils.epath.Path` (local files, or fsspec's gcsfs and friends for URIs;
TensorFlow's gfile where TensorFlow is installed), and orbax writes the
checkpoint arrays through TensorStore, which reads the same URIs.
"""

import logging
import os
import threading
import uuid

from etils import epath

from digits_jax.errors import UserError

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


def write_atomically(path: epath.Path, data: str | bytes) -> None:
  """Writes the whole file, so that a crash leaves the previous version: a
  temporary file beside it, renamed into place (on object stores one
  upload is already all or nothing)."""
  if is_remote(path):
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return
  temporary = path.parent / f'.{path.name}.{uuid.uuid4().hex}.tmp'
  (temporary.write_bytes if isinstance(data, bytes) else
   temporary.write_text)(data)
  temporary.replace(path)


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


# Client libraries that log each failed retry with its traceback; while a
# remote path is first looked at, the one line below says it instead.
_RETRYING_LOGGERS = ('gcsfs', 'fsspec', 's3fs', 'google')


def call_with_deadline(function, description: str,
                       deadline_s: float | None = None):
  """`function()`, or a UserError naming `description` if it raises or has
  not answered within `deadline_s` (default: `remote_deadline_s()`).

  The call runs in a daemon thread, left to its retries when the deadline
  passes: a process that has said its one line exits then, rather than
  waiting for a client library to give up (a pool's worker thread would be
  joined at exit)."""
  if deadline_s is None:
    deadline_s = remote_deadline_s()
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
      raise UserError(
          f'{description}: no answer in {deadline_s:.0f} s; check the bucket '
          'name, the network and the credentials (gcloud auth '
          'application-default login)')
    error = outcome.get('error')
    if isinstance(error, UserError):
      raise error
    if error is not None:
      raise UserError(f'{description}: {_first_line(error)}; check the path '
                      'and the credentials') from None
    return outcome['value']
  finally:
    if answered.is_set():
      # Else the abandoned call is still retrying: its loggers stay quiet,
      # or each retry would print its traceback under the one line.
      for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def write_output(output: str, data: str | bytes, *,
                 create_parents: bool = False) -> epath.Path:
  """Writes a file the user named with `--output` (a local path or a URI);
  one UserError line if it cannot be written, within the remote deadline."""
  path = resolve(output)
  description = f'cannot write --output={path}'
  if is_remote(path):
    call_with_deadline(lambda: write_atomically(path, data), description)
    return path
  try:
    if create_parents:
      path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data)
  except OSError as e:
    raise UserError(f'{description} ({e.strerror or e}); choose a writable '
                    'path') from None
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
