"""The one error type the CLI reports as a single line with exit code 2."""


class UserError(Exception):
  """Bad input from the user: a config value, a path, a checkpoint.

  The message says what was wrong and what to do; `main` prints it alone,
  without a traceback.
  """


def in_one_line(error: BaseException, limit: int = 160) -> str:
  """`Type: the message's first line`, for naming what a library raised
  inside a UserError or warning."""
  lines = str(error).strip().splitlines()
  message = lines[0][:limit] if lines else ''
  return f'{type(error).__name__}: {message}'.rstrip(': ')
