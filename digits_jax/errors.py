"""The one error type the CLI reports as a single line with exit code 2."""


class UserError(Exception):
  """Bad input from the user: a config value, a path, a checkpoint.

  The message says what was wrong and what to do; `main` prints it alone,
  without a traceback.
  """
