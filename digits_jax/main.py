"""Command line: train, evaluate, predict with or export a checkpoint.

  python -m digits_jax.main --config=configs/improved.py --workdir=runs/improved
  python -m digits_jax.main --config=configs/improved.py --workdir=runs/improved \
      --mode=eval
  ... --mode=predict --images=digit.png   ... --mode=export --output=digits.jax
  ... --mode=serve --port=8000             (a page to draw digits on)
  ... --mode=compile --topology=v5e:4x4     (for a TPU slice, without one)

Bad input (a config value, a workdir, a checkpoint) ends with one line on
stderr and exit code 2.
"""

import logging
import os
import sys
import traceback
import warnings

from absl import app
from absl import flags
from absl import logging as absl_logging
from ml_collections import config_flags

from digits_jax import config_checks
from digits_jax import interruption
from digits_jax import paths
from digits_jax.errors import ProcessLost
from digits_jax.errors import UserError
from digits_jax.errors import WriteFailed

DEFAULT_WORKDIR = 'runs/default'

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', DEFAULT_WORKDIR,
    'Run directory, local or a URI such as gs://bucket/run: checkpoints, '
    'metrics, TensorBoard events, eval_test.json.')
_MODE = flags.DEFINE_enum('mode', 'train',
                          ['train', 'eval', 'predict', 'export', 'serve',
                           'compile'],
                          'train (resuming from --workdir if it holds a '
                          'checkpoint), eval (the best checkpoint on the '
                          'test set), predict (--images), export (the best '
                          'checkpoint as a jax.export artifact, --output) or '
                          'serve (a page to draw digits on, and POST '
                          '/predict, at --host:--port) or compile (the run\'s '
                          'programs for a TPU --topology, on this machine: '
                          'memory, FLOPs, an estimated speed; needs libtpu, '
                          'no TPU, no data, no workdir).')
_TOPOLOGY = flags.DEFINE_string(
    'topology', '', 'compile: the TPU slice as libtpu names it, '
    'GENERATION:CHIPS, e.g. v5e:2x2, v5e:16x16 (256 chips, 64 hosts), '
    'v4:2x2x2, v5p:2x2x1, v6e:4x4.')
_IMAGES = flags.DEFINE_list(
    'images', [], 'predict: comma-separated image files (PNG, JPEG, ...), '
    'directories of them, or .npy arrays of [N, 28, 28] digits.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'predict: also write the predictions as JSON; export: '
    'the artifact (a local path or a URI).')
_MEMBER = flags.DEFINE_string(
    'member', '', 'predict, export, serve with an ensemble or a sweep: '
    '\'\' (all members: the mean of their probabilities), best (the member '
    'with the best validation accuracy at the best checkpoint) or a '
    'member\'s number.')
_HOST = flags.DEFINE_string(
    'host', '127.0.0.1', 'serve: the address to listen on. The default '
    'answers this machine only; 0.0.0.0 (or an interface\'s address) lets '
    'other machines use it.')
_PORT = flags.DEFINE_integer('port', 8000, 'serve: the port (0: any free '
                             'one, named in the log).', lower_bound=0,
                             upper_bound=65535)

# How this process joins a multi-host run: flags, not config keys, because
# they differ from host to host and say nothing about the recipe, which a
# checkpoint records and a resume compares.
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Join a multi-host run with '
    'jax.distributed.initialize(): the cluster is found by itself (Cloud TPU, '
    'SLURM) unless --coordinator_address names it.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', '', 'With --distributed, on hosts without a '
    'cluster manager: process 0\'s HOST:PORT, e.g. 10.0.0.1:1234.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', 1, 'With --coordinator_address: how many processes.',
    lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', 0, 'With --coordinator_address: this process\'s index, '
    'in [0, --num_processes).', lower_bound=0)
_HEARTBEAT_TIMEOUT_S = flags.DEFINE_integer(
    'heartbeat_timeout_s', 30, 'With --distributed: how long a process may '
    'be silent before the others count it lost and end with one line '
    '(JAX\'s default is 100).', lower_bound=1)
flags.register_multi_flags_validator(
    ['num_processes', 'process_id'],
    lambda values: values['process_id'] < values['num_processes'],
    '--process_id must be below --num_processes')
# What these were called when they were config keys (a friendlier error).
_LAUNCH_KEYS = ('distributed', 'coordinator_address', 'num_processes',
                'process_id')


# TFDS's warnings that say nothing a user can act on: it decodes MNIST's
# 28x28 PNGs with Pillow (OpenCV would not be faster at that size), and a
# dataset being prepared for the first time has no dataset_info.json yet.
_UNACTIONABLE_WARNINGS = ('OpenCV is not installed',
                          'has no dataset_info.json')


# JAX's persistent compilation cache cannot hold a program with oneDNN's
# custom calls (platform.py's choice on CPUs with bfloat16 units): XLA fails
# to serialize it, and JAX warns once per program. `_note_uncacheable` says
# it once instead.
_UNCACHEABLE = ('Error writing persistent compilation cache entry .*'
                'std::bad_alloc')


def _drop_unactionable(record: logging.LogRecord) -> bool:
  return not any(text in record.getMessage()
                 for text in _UNACTIONABLE_WARNINGS)


_HANDLER = 'digits_jax.main'


def _configure_logging() -> None:
  """Quiet by default: the trainer's own lines (the `digits_jax` loggers),
  warnings and errors. Libraries' INFO logs (orbax, TFDS, JAX) show only
  when asked with absl's `--verbosity=0` (or `-v`); TensorFlow's C++ INFO
  notices only with TF_CPP_MIN_LOG_LEVEL set."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  if not (flags.FLAGS['verbosity'].present or flags.FLAGS['v'].present):
    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_logger().addFilter(_drop_unactionable)
  ours = logging.getLogger('digits_jax')
  ours.setLevel(logging.INFO)
  # One handler, on this call's stderr, however often `main` runs in one
  # process (the tests run it in theirs).
  for previous in [h for h in ours.handlers if h.get_name() == _HANDLER]:
    ours.removeHandler(previous)
  handler = logging.StreamHandler(sys.stderr)
  handler.set_name(_HANDLER)
  handler.setFormatter(logging.Formatter('%(asctime)s %(message)s',
                                         datefmt='%H:%M:%S'))
  ours.addHandler(handler)
  ours.propagate = False  # Not again through absl's handler.
  warnings.filterwarnings('ignore', message=_UNCACHEABLE,
                          category=UserWarning)


def _note_uncacheable(platform) -> None:
  """One line where JAX's compilation cache is on and cannot hold this
  platform's programs (oneDNN's convolutions)."""
  import jax  # pylint: disable=g-import-not-at-top
  if platform.conv_library == 'onednn' and jax.config.jax_compilation_cache_dir:
    logging.getLogger('digits_jax.main').info(
        "oneDNN's convolutions (platform.py) do not go into JAX's "
        'compilation cache: the programs compile in each run.')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  # First: a SIGTERM (a preempted job) or Ctrl-C at any moment from here
  # ends with one line and exit code 0, never a traceback or 143.
  stop_signal = interruption.StopSignal()
  try:
    _main(argv, stop_signal)
  except interruption.Interrupted as e:
    if _MODE.value == 'serve':
      print(f'{e.signal_name} received: stopped serving (the requests it had '
            'accepted were answered).', file=sys.stderr)
      sys.exit(0)
    if _MODE.value != 'train':
      done = (f'before --mode={_MODE.value} finished: stopped (each file it '
              'writes is written whole, so none is partial)')
    elif e.after_training:
      done = ('after training: stopped, its checkpoints saved, the test '
              'evaluation not done (--mode=eval does it)')
    else:
      done = ('before training began: stopped, no checkpoint written (any '
              'already in the workdir are as they were)')
    print(f'{e.signal_name} received {done}. Rerun the same command to go '
          'on.', file=sys.stderr)
    sys.exit(0)
  finally:
    stop_signal.close()


def _main(argv, stop_signal):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; options go as --name=value')
  if _CONFIG.value is None:
    _fail('--config is required, e.g. --config=configs/improved.py')
  _configure_logging()
  try:
    config = _CONFIG.value
    config.keys()  # The config file loads lazily: fail here if it cannot.
  except OSError as e:
    _fail(f'cannot load the --config file: {str(e).splitlines()[-1].strip()}')
  try:
    config_checks.validate(config, config_checks.default_config())
  except UserError as e:
    _fail(str(e))
  if _COORDINATOR_ADDRESS.value and not _DISTRIBUTED.value:
    _fail('--coordinator_address is for a multi-host run: add --distributed')
  if _MODE.value == 'compile':
    # The programs are compiled for TPU devices libtpu describes; JAX's own
    # backend stays the CPU (else, with no TPU attached, libtpu's failed
    # start prints its complaints first). A compile-only TPU executable
    # cannot be loaded back from JAX's persistent cache: none is written.
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    os.environ['JAX_ENABLE_COMPILATION_CACHE'] = 'false'
  # Imported once the config is known good, so that `--help` and a bad
  # value answer without importing JAX (tests/test_cli.py).
  import jax  # pylint: disable=g-import-not-at-top
  from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import parallel  # pylint: disable=g-import-not-at-top
  from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top
  from digits_jax import train  # pylint: disable=g-import-not-at-top

  try:
    # The run's members, once: every mode below takes them. A sweep's are
    # its combinations (num_models set), each member's values checked.
    config, members = members_lib.resolve(config)
    if _MODE.value == 'compile':
      # For a TPU slice, from here: no cluster, no workdir, no data.
      from digits_jax import tpu_compile  # pylint: disable=g-import-not-at-top
      tpu_compile.main(config, members, _TOPOLOGY.value)
      return
    if _DISTRIBUTED.value:
      parallel.initialize_distributed(
          _COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
          _HEARTBEAT_TIMEOUT_S.value)
    if jax.process_index() != 0:  # Process 0 reports.
      absl_logging.set_verbosity(absl_logging.WARNING)
      logging.getLogger('digits_jax').setLevel(logging.WARNING)
    # The platform's choices (platform.py), decided once for every mode;
    # after joining the cluster, which must come before JAX's backend.
    platform = platform_lib.current(config.conv_impl)
    _note_uncacheable(platform)
    workdir = paths.prepare_workdir(_WORKDIR.value,
                                    must_exist=_MODE.value != 'train')
    logging.getLogger('digits_jax.main').info('Workdir: %s', workdir)
    _run_mode(config, members, workdir, platform, stop_signal)
  except UserError as e:
    _fail(str(e))
  except (train.TrainingDiverged, WriteFailed) as e:
    # The machine's or the numbers' fault, not the input's: exit code 1.
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except ProcessLost as e:
    print(f'error: {e}', file=sys.stderr)
    sys.stderr.flush()
    # Not through JAX's exit handler: its shutdown barrier would wait for
    # the lost process's heartbeat to time out, then abort with a trace.
    # The lock and the metrics were released by the loop's `finally`.
    os._exit(1)  # pylint: disable=protected-access


def _run_mode(config, members, workdir, platform, stop_signal) -> None:
  """The --mode asked for, on a prepared workdir."""
  from digits_jax import evaluation  # pylint: disable=g-import-not-at-top
  from digits_jax import train  # pylint: disable=g-import-not-at-top
  if _MODE.value == 'train':
    train.train_and_evaluate(config, members, workdir, platform, stop_signal)
  elif _MODE.value == 'eval':
    evaluation.evaluate_checkpoint(config, members, workdir, platform,
                                   must_write=False)
  elif _MODE.value == 'serve':
    from digits_jax import serve  # pylint: disable=g-import-not-at-top
    serve.serve(config, members, workdir, platform, _HOST.value,
                _PORT.value, _MEMBER.value)
  elif _MODE.value == 'export':
    from digits_jax import export  # pylint: disable=g-import-not-at-top
    export.export_checkpoint(config, members, workdir, _OUTPUT.value,
                             platform, _MEMBER.value)
  else:
    if not _IMAGES.value:
      raise UserError('--mode=predict needs --images=PATH[,PATH...]')
    from digits_jax import predict  # pylint: disable=g-import-not-at-top
    if predict.predict_files(config, members, workdir, _IMAGES.value,
                             _OUTPUT.value, platform, _MEMBER.value):
      sys.exit(1)  # Some inputs failed; each said why on its own line.


def _config_file_error(error: BaseException, argv) -> str | None:
  """One line for an exception the --config file itself raised, else None.

  ml_collections runs the file while parsing the flags, so its errors (a
  typo, a key that a ConfigDict lacks) arrive here with a traceback that
  passes through the file; an unknown `--config.KEY` override raises the
  same exception types from ml_collections alone.
  """
  path = None
  for i, arg in enumerate(argv):  # --config=FILE or --config FILE.
    if arg.startswith('--config='):
      path = arg.split('=', 1)[1]
    elif arg == '--config' and i + 1 < len(argv):
      path = argv[i + 1]
  if not path:
    return None
  path = os.path.abspath(path.split(':', 1)[0])  # 'file.py:arg' is allowed.
  if isinstance(error, SyntaxError) and error.filename and (
      os.path.abspath(error.filename) == path):
    line = error.lineno
  else:
    lines = [lineno for frame, lineno in traceback.walk_tb(error.__traceback__)
             if os.path.abspath(frame.f_code.co_filename) == path]
    if not lines:
      return None
    line = lines[-1]
  message = str(error).splitlines()[0] if str(error) else ''
  return (f'the --config file {path} failed at line {line}: '
          f'{type(error).__name__}: {message}')


def _parse_flags(argv):
  # A bad flag or an unknown `--config.key` would end in a usage dump; say
  # it in one line instead.
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # A config file that raises arrives as a traceback inside the message:
    # keep its first line and the exception it ended with.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    _fail(lines[0] if len(lines) == 1 else f'{lines[0]} {lines[-1]}')
  except Exception as e:  # pylint: disable=broad-except
    # Whatever the config file raised is the config file's error, whatever
    # its type; re-raised below if it came from elsewhere.
    message = _config_file_error(e, argv)
    if message:
      _fail(message)
    if isinstance(e, (AttributeError, KeyError)):
      # ml_collections' way of saying that an override names no field.
      name = str(e).strip('"\'')
      if name in _LAUNCH_KEYS:
        _fail(f'--config.{name} is now a flag of its own: --{name}')
      _fail(f'the config has no key {name!r}; see the config file for the '
            'keys --config.KEY can set')
    if isinstance(e, (ValueError, TypeError)):
      _fail(f'bad command line value: {str(e).splitlines()[0]}')
    raise


def run():
  app.run(main, flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
