"""The errors the CLI reports as a single line: the user's (exit code 2)
and the machine's faults (exit code 1)."""


class UserError(Exception):
  """Bad input from the user: a config value, a path, a checkpoint.

  The message says what was wrong and what to do; `main` prints it alone,
  without a traceback.
  """


class WriteFailed(Exception):
  """The machine refused a write: a full disk, a read-only folder, no
  permission, a bucket that stopped answering. Not the user's input, so not
  a UserError: `main` prints the message alone and exits 1.

  `what`: what could not be written; `where`: the path; `fault`: why, as a
  user reads it ('the disk is full (3 MB free there)').
  """

  def __init__(self, what: str, where, fault: str, advice: str = ''):
    self.what, self.where, self.fault = what, where, fault
    self.advice = advice
    super().__init__(self.message())

  def message(self) -> str:
    return (f'cannot write {self.what} to {self.where}: {self.fault}'
            + (f'; {self.advice}' if self.advice else ''))

  def __str__(self) -> str:
    return self.message()


class ProcessLost(Exception):
  """A process of a multi-process run is gone (killed, crashed, its host
  down) and a collective on this one failed: `main` prints the message and
  ends the process at once, without JAX's shutdown barrier, which would
  wait for the lost process's heartbeat to time out and then abort."""


def in_one_line(error: BaseException, limit: int = 160) -> str:
  """`Type: the message's first line`, for naming what a library raised
  inside a UserError or warning."""
  lines = str(error).strip().splitlines()
  message = lines[0][:limit] if lines else ''
  return f'{type(error).__name__}: {message}'.rstrip(': ')
