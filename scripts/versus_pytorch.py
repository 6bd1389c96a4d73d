r"""digits_jax against its peers, interleaved: training images/s per round.

Each round runs every contender once, one after the other, so that a
drifting machine moves them all alike: `scripts/benchmark.py` under each
`--digits_jax` command (its own trainer and the Flax-examples reference it
times beside it), `scripts/torch_reference.py` eager and under
`torch.compile`, and `scripts/keras_reference.py` (the article's stack).
Same model, augmentation, batch and input everywhere. Prints each round's
images/s, the median per contender and its ratio to PyTorch eager and to
torch.compile, then one JSON line of the same.

  python scripts/versus_pytorch.py --torch_python=/tmp/torchvenv/bin/python \
      --keras_python=/tmp/kerasvenv/bin/python \
      --digits_jax=".venv/bin/python scripts/benchmark.py" \
      --digits_jax=".venv-floor/bin/python scripts/benchmark.py" \
      --batch=128 --input_size=28 --rounds=3

A `--digits_jax` command is a Python and a benchmark script with any of its
flags (`--compute_dtype=bfloat16`; another checkout's script for a before
and after). PyTorch and TensorFlow are not dependencies of digits_jax: each
runs in an environment of its own (their scripts' docstrings).
"""

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys

from absl import app
from absl import flags

_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', None, 'Python of an environment with PyTorch; none: '
    'PyTorch is left out.')
_KERAS_PYTHON = flags.DEFINE_string(
    'keras_python', None, 'Python of an environment with Keras and '
    'TensorFlow; none: Keras is left out.')
_DIGITS_JAX = flags.DEFINE_multi_string(
    'digits_jax', None, 'A benchmark command: a Python, scripts/benchmark.py '
    'and its flags (default: this Python and this checkout\'s script).')
_REFERENCE = flags.DEFINE_bool(
    'reference', True, 'Also show the Flax-examples reference each '
    'benchmark command times.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_INPUT_SIZE = flags.DEFINE_enum('input_size', '28', ['28', '32'], 'Input.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Rounds of every contender.')

_SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def _run(command: list[str]) -> dict:
  """Runs one benchmark; its last line is JSON with images_per_sec."""
  command = command + [f'--batch={_BATCH.value}',
                       f'--input_size={_INPUT_SIZE.value}']
  result = subprocess.run(command, capture_output=True, text=True,
                          check=False)
  if result.returncode != 0:
    sys.exit(f'{shlex.join(command)} failed (exit {result.returncode}):\n'
             f'{result.stderr[-2000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])


def _contenders() -> list[tuple[str, list[str]]]:
  """(kind, command) in the order each round runs them."""
  commands = _DIGITS_JAX.value or [
      f'{sys.executable} {os.path.join(_SCRIPTS, "benchmark.py")}']
  contenders = [('digits_jax', shlex.split(c)) for c in commands]
  if _TORCH_PYTHON.value:
    torch = [_TORCH_PYTHON.value, os.path.join(_SCRIPTS, 'torch_reference.py')]
    contenders += [('pytorch', torch), ('pytorch', torch + ['--compile'])]
  if _KERAS_PYTHON.value:
    contenders.append(('keras', [_KERAS_PYTHON.value,
                                 os.path.join(_SCRIPTS, 'keras_reference.py')]))
  return contenders


def _rows(kind: str, command: list[str], result: dict) -> dict[str, float]:
  """The table's rows one run gives: name -> images/s."""
  if kind == 'pytorch':
    return {f'PyTorch {result["torch"]} {result["mode"]}':
                result['images_per_sec']}
  if kind == 'keras':
    return {f'Keras {result["keras"]} (TensorFlow)': result['images_per_sec']}
  flags_given = ' '.join(a for a in command[2:] if a.startswith('--'))
  script = command[1]
  tree = os.path.basename(os.path.dirname(os.path.dirname(
      os.path.abspath(script))))
  name = f'digits_jax ({tree}), JAX {result["jax"]}'
  rows = {f'{name} {flags_given}'.strip(): result['images_per_sec']}
  if _REFERENCE.value and 'reference_images_per_sec' in result:
    rows[f'Flax-examples reference, JAX {result["jax"]}'] = (
        result['reference_images_per_sec'])
  return rows


def main(argv):
  del argv
  contenders = _contenders()
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} '
        f'CPUs; batch {_BATCH.value}, input {_INPUT_SIZE.value}x'
        f'{_INPUT_SIZE.value}; training images/s')
  table: dict[str, list[float]] = {}
  for round_ in range(1, _ROUNDS.value + 1):
    for kind, command in contenders:
      for name, images_per_sec in _rows(kind, command, _run(command)).items():
        # The same reference twice (two commands on one JAX): rounds apart.
        table.setdefault(name, []).append(images_per_sec)
        print(f'round {round_}: {name}: {images_per_sec:.1f}', flush=True)
  medians = {name: statistics.median(values) for name, values in table.items()}
  eager = next((v for k, v in medians.items() if k.endswith(' eager')), None)
  compiled = next((v for k, v in medians.items()
                   if k.endswith('torch.compile')), None)
  width = max(len(name) for name in table)
  print(f'\n{"":{width}s}  {"rounds":>24s} {"median":>8s} {"/eager":>7s} '
        f'{"/compile":>8s}')
  for name, values in table.items():
    rounds = ' '.join(f'{v:.0f}' for v in values)
    ratios = ''.join(f' {medians[name] / base:7.2f}' if base else '        '
                     for base in (eager, compiled))
    print(f'{name:{width}s}  {rounds:>24s} {medians[name]:8.0f}{ratios}')
  print(json.dumps({'images_per_sec': table, 'batch': _BATCH.value,
                    'input_size': int(_INPUT_SIZE.value)}))


if __name__ == '__main__':
  app.run(main)
