r"""What a GPU or TPU owner runs once: the trainer checked and measured there.

  python scripts/device_check.py --data_dir=~/tensorflow_datasets

1. the test suite on the device (`python -m pytest -q`);
2. `scripts/benchmark.py` at batch 128 and 1024 (28x28 input): images/s of
   this trainer and of the Flax-examples-style reference, side by side; and
   ensembles of 1, 4 and 8 members (`--num_models=1,4,8`), both forms;
3. `configs/fast.py` trained to its test accuracy, with the wall time.

Prints each part's output as it runs, then one JSON line: the device, JAX's
version, the tests' closing line, the benchmark figures and the fast run's
test accuracy and seconds. `--data_dir` names a prepared TFDS `mnist` (a
machine without network access cannot prepare one: copy it there first);
`--skip` leaves parts out (tests, benchmark, fast).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command, env=None, timeout=None) -> tuple[int, str, float]:
  """Runs a command in the project root, echoing its output; returns the
  exit code, the output and the seconds taken."""
  print('$', ' '.join(command), flush=True)
  start = time.perf_counter()
  process = subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  for line in process.stdout:
    sys.stdout.write(line)
    lines.append(line)
  try:
    code = process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    code = -9
  return code, ''.join(lines), time.perf_counter() - start


def _last_json_line(output: str) -> dict | None:
  for line in reversed(output.splitlines()):
    if line.startswith('{'):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        pass
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', default='',
                      help="a prepared TFDS data_dir ('': TFDS's default)")
  parser.add_argument('--skip', default='',
                      help='comma-separated parts to leave out: tests, '
                      'benchmark, fast')
  args = parser.parse_args()
  skip = set(filter(None, args.skip.split(',')))
  data_dir = os.path.expanduser(args.data_dir) if args.data_dir else ''

  import jax  # pylint: disable=g-import-not-at-top
  summary = {'device': f'{jax.device_count()} x {jax.devices()[0].device_kind}',
             'backend': jax.default_backend(), 'jax': jax.__version__}

  if 'tests' not in skip:
    env = dict(os.environ)
    if data_dir:
      env['DIGITS_JAX_TEST_DATA_DIR'] = data_dir
    code, output, seconds = _run([sys.executable, '-m', 'pytest', '-q'],
                                 env=env)
    closing = [l for l in output.splitlines() if ' passed' in l or
               ' failed' in l]
    summary['tests'] = {'exit_code': code, 'seconds': round(seconds),
                        'result': closing[-1] if closing else None}

  if 'benchmark' not in skip:
    summary['benchmark'] = {}
    for batch in (128, 1024):
      code, output, _ = _run([sys.executable, 'scripts/benchmark.py',
                              f'--batch={batch}', '--input_size=28',
                              '--steps=8'])
      summary['benchmark'][f'batch_{batch}'] = (
          _last_json_line(output) if code == 0 else {'exit_code': code})
    code, output, _ = _run([sys.executable, 'scripts/benchmark.py',
                            '--batch=128', '--input_size=28', '--steps=8',
                            '--num_models=1,4,8'])
    summary['benchmark']['ensembles'] = (
        _last_json_line(output) if code == 0 else {'exit_code': code})

  if 'fast' not in skip:
    with tempfile.TemporaryDirectory() as workdir:
      command = [sys.executable, '-m', 'digits_jax.main',
                 '--config=configs/fast.py', f'--workdir={workdir}']
      if data_dir:
        command.append(f'--config.data_dir={data_dir}')
      code, _, seconds = _run(command)
      report_path = os.path.join(workdir, 'eval_test.json')
      report = {}
      if os.path.exists(report_path):
        with open(report_path) as f:
          report = json.load(f)
      summary['fast'] = {'exit_code': code, 'wall_seconds': round(seconds, 1),
                         'test_accuracy': report.get('accuracy'),
                         'test_loss': report.get('loss')}

  print(json.dumps(summary))


if __name__ == '__main__':
  main()
