r"""The trainer checked and measured on a GPU or TPU, in one command of ~8 min.

  python scripts/device_check.py --data_dir=DATA_DIR --out=DIR

Built for the lent GPU machine (docs/device.md: scripts/device_kit.py makes
what it must carry and prints the call), and fine on any accelerator host.
Parts, in order, each with its own time limit (so that one that hangs does
not take the others with it), all within `--budget_s`:

  env         the device, the versions of what is installed, the kit's imports
  tests       the tests that exercise the accelerator path: platform, models,
              augmentation, optimizer, steps and the loop, ensembles, export
              (not the CPU-only ones: several simulated hosts, the CPU's
              compiler options)
  benchmark   scripts/benchmark.py at batch 128 and 1024: images/s of the
              trainer and of the Flax-examples-style reference
  ensembles   scripts/benchmark.py --num_models=1,4,8: images/s per member,
              members side by side and vmapped
  fast        configs/fast.py trained to its test accuracy: wall time, the
              first epoch against the others (compilation), images/s

`DIR/device_check.json` is rewritten after each part, so a run stopped at
its limit still returns what it measured; every part's output goes to
`DIR/device_check.log`. On a CPU (a dry run of the command) every part runs
a smaller size so that the whole check completes; its figures are not a
device's.
"""

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Seconds each part may take; together the ~8 minutes of a lent machine's
# 15-minute lease that are left after it starts.
LIMITS = {'env': 40, 'tests': 170, 'benchmark': 80, 'ensembles': 70,
          'fast': 140}
TEST_FILES = ['tests/test_platform.py', 'tests/test_models.py',
              'tests/test_augment.py', 'tests/test_optim.py',
              'tests/test_train.py', 'tests/test_ensemble.py',
              'tests/test_export.py']
# Simulated CPU hosts: they test jax.distributed on the CPU, not the device.
TEST_DESELECT = 'not two_hosts'

ENV_PROBE = r"""
import importlib.metadata, json, jax
names = ['jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
         'tensorflow-datasets', 'array-record', 'ml-collections',
         'tensorboardX']
versions = {}
for name in names:
  try:
    versions[name] = importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    versions[name] = None
import tensorflow_datasets, array_record, ml_collections, tensorboardX
devices = jax.devices()
print(json.dumps({'backend': jax.default_backend(),
                  'device_count': len(devices),
                  'device_kind': devices[0].device_kind,
                  'versions': versions}))
"""


class Check:
  """Runs the parts, each in a process of its own, and keeps the summary."""

  def __init__(self, out: str, budget_s: float):
    os.makedirs(out, exist_ok=True)
    self.json_path = os.path.join(out, 'device_check.json')
    self.log_path = os.path.join(out, 'device_check.log')
    self.deadline = time.monotonic() + budget_s
    self.summary = {'budget_s': budget_s, 'parts': {}}
    open(self.log_path, 'w').close()

  def save(self):
    scratch = self.json_path + '.tmp'
    with open(scratch, 'w') as f:
      json.dump(self.summary, f, indent=1)
    os.replace(scratch, self.json_path)

  def run(self, part: str, command: list[str], env: dict | None = None,
          limit: float | None = None) -> tuple[dict, str]:
    """Runs `command` with its limit; returns its record and its output."""
    limit = min(limit or LIMITS[part], self.deadline - time.monotonic())
    record = {'command': shlex.join(command)}
    if limit < 5:
      record['skipped'] = 'the check ran out of its budget'
      return record, ''
    with open(self.log_path, 'a') as log:
      log.write(f'\n=== {part}: $ {record["command"]}\n')
      log.flush()
      begin = log.tell()
      start = time.monotonic()
      # A session of its own, so that a timeout ends its children too.
      process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT,
                                 start_new_session=True)
      try:
        record['exit_code'] = process.wait(timeout=limit)
      except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        record['timed_out_after_s'] = round(limit)
      record['seconds'] = round(time.monotonic() - start, 1)
    with open(self.log_path) as log:
      log.seek(begin)
      output = log.read()
    return record, output

  def record(self, name: str, record: dict):
    self.summary['parts'][name] = record
    self.save()
    brief = {k: v for k, v in record.items() if k != 'command'}
    print(f'{name}: {json.dumps(brief)[:600]}', flush=True)


def last_json_line(output: str) -> dict | None:
  for line in reversed(output.splitlines()):
    if line.startswith('{'):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        pass
  return None


_OUTCOMES = 'PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS'
# `pytest -v` prints "tests/x.py::test_y PASSED"; with -n, "[gw0] [ 10%]
# PASSED tests/x.py::test_y".
_OUTCOME_LINE = re.compile(
    rf'^(?:\[gw\d+\] \[ *\d+%\] ({_OUTCOMES}) (tests/\S+)'
    rf'|(tests/\S+::\S+) ({_OUTCOMES}))')


def test_outcomes(output: str) -> dict:
  """Each test's outcome from pytest -v lines (also from a killed run)."""
  outcomes = {}
  for line in output.splitlines():
    if match := _OUTCOME_LINE.match(line):
      outcome, test = ((match.group(1), match.group(2)) if match.group(1)
                       else (match.group(4), match.group(3)))
      outcomes[test] = outcome
  counts = {}
  for outcome in outcomes.values():
    counts[outcome.lower()] = counts.get(outcome.lower(), 0) + 1
  return {'counts': counts,
          'not_passed': sorted(t for t, o in outcomes.items()
                               if o in ('FAILED', 'ERROR'))}


def fast_run_report(workdir: str) -> dict:
  """fast.py's run: test figures, and where its time went, from its files."""
  report = {}
  path = os.path.join(workdir, 'eval_test.json')
  if os.path.exists(path):
    with open(path) as f:
      test = json.load(f)
    report.update(test_accuracy=test.get('accuracy'),
                  test_loss=test.get('loss'))
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      epochs = [json.loads(line) for line in f if line.strip()]
    seconds = [e['epoch_seconds'] for e in epochs]
    report.update(
        epochs=len(epochs),
        epoch_seconds=[round(s, 2) for s in seconds],
        best_val_accuracy=max(e['val_accuracy'] for e in epochs),
        images_per_sec_after_epoch_1=[round(e['images_per_sec'])
                                      for e in epochs[1:]])
    if len(seconds) > 1:
      # Epochs are equally long; the first also compiles the program.
      rest = sorted(seconds[1:])[len(seconds[1:]) // 2]
      report['compile_seconds_estimate'] = round(seconds[0] - rest, 2)
      report['training_seconds'] = round(sum(seconds), 2)
  return report


def main():
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--data_dir', required=True,
                      help='a prepared TFDS data_dir holding mnist')
  parser.add_argument('--out', required=True,
                      help='the folder for device_check.json and .log')
  parser.add_argument('--parts', default=','.join(LIMITS),
                      help='comma-separated parts to run, in order')
  parser.add_argument('--budget_s', type=float, default=sum(LIMITS.values()),
                      help='seconds for the whole check')
  args = parser.parse_args()
  parts = args.parts.split(',')
  if unknown := set(parts) - set(LIMITS):
    sys.exit(f'device_check: unknown parts {sorted(unknown)}; the parts are '
             f'{", ".join(LIMITS)}')
  data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  if not os.path.isdir(os.path.join(data_dir, 'mnist')):
    sys.exit(f'device_check: no prepared mnist in --data_dir={data_dir}; '
             'build it with scripts/device_kit.py')

  check = Check(args.out, args.budget_s)
  python = sys.executable
  # Every process compiles its own programs: no compilation cache shared
  # with a run before, so compile times are what a first run pays.
  base_env = dict(os.environ, DIGITS_JAX_TEST_DATA_DIR=data_dir)
  base_env.pop('JAX_COMPILATION_CACHE_DIR', None)

  record, output = check.run('env', [python, '-c', ENV_PROBE], base_env)
  record.update(last_json_line(output) or {'error': output[-2000:]})
  try:
    record['nvidia_smi'] = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,driver_version,memory.total',
         '--format=csv,noheader'], capture_output=True, text=True,
        timeout=20).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    pass
  check.record('env', record)
  on_cpu = record.get('backend', 'cpu') == 'cpu'
  check.summary['sized_for'] = 'a CPU dry run' if on_cpu else 'the device'

  if 'tests' in parts:
    # The tests start processes of their own: no process may take most of
    # the device's memory up front, as JAX does by default.
    env = dict(base_env, XLA_PYTHON_CLIENT_PREALLOCATE='false')
    command = [python, '-m', 'pytest', '-v', '-p', 'no:cacheprovider',
               '-k', TEST_DESELECT] + TEST_FILES
    # On a CPU, the tests that neither train nor start a process.
    command += ['-n', '2', '-m', 'not slow'] if on_cpu else ['-n', '4']
    record, output = check.run('tests', command, env)
    record.update(test_outcomes(output))
    closing = [line for line in output.splitlines()
               if re.search(r'\d+ (passed|failed)', line)]
    record['result'] = closing[-1].strip('= ') if closing else None
    check.record('tests', record)

  # Timed windows long enough to hide a dispatch's overhead on a device.
  steps, windows = ('2', '2') if on_cpu else ('100', '5')
  bench = [python, 'scripts/benchmark.py', '--input_size=28',
           f'--steps={steps}', f'--windows={windows}']
  if 'benchmark' in parts:
    results = {}
    for batch in (128, 256) if on_cpu else (128, 1024):
      record, output = check.run('benchmark', bench + [f'--batch={batch}'],
                                 base_env, LIMITS['benchmark'] / 2)
      record.update(last_json_line(output) or {})
      results[f'batch_{batch}'] = record
    check.record('benchmark', results)

  if 'ensembles' in parts:
    record, output = check.run('ensembles', bench + [
        '--batch=128', '--num_models=' + ('1,2' if on_cpu else '1,4,8')],
                               base_env)
    record.update(last_json_line(output) or {})
    check.record('ensembles', record)

  if 'fast' in parts:
    with tempfile.TemporaryDirectory() as workdir:
      command = [python, '-m', 'digits_jax.main', '--config=configs/fast.py',
                 f'--workdir={workdir}', f'--config.data_dir={data_dir}']
      if on_cpu:
        command += ['--config.num_epochs=2', '--config.max_train_examples=2560',
                    '--config.validation_size=500',
                    '--config.max_test_examples=1000']
      record, _ = check.run('fast', command, base_env)
      record.update(fast_run_report(workdir))
      check.record('fast', record)

  print(json.dumps(check.summary))


if __name__ == '__main__':
  main()
