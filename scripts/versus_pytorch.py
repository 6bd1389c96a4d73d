r"""digits_jax against PyTorch eager, back to back: throughput ratios per round.

Alternates `scripts/benchmark.py` (this environment) and
`scripts/torch_reference.py` (a PyTorch environment, see its docstring) for
`--rounds` rounds at one batch and input size, so that a drifting machine
moves both sides of each pair alike. Prints each round's images/s and ratio,
then one JSON line with the median ratio.

  python scripts/versus_pytorch.py --torch_python=/tmp/torchvenv/bin/python \
      --batch=128 --input_size=28 --rounds=4
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', None, 'Python of an environment with PyTorch.',
    required=True)
_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_INPUT_SIZE = flags.DEFINE_enum('input_size', '28', ['28', '32'], 'Input.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Back-to-back pairs.')

_SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def _images_per_sec(python: str, script: str) -> float:
  """Runs one script; its last line is JSON with images_per_sec."""
  result = subprocess.run(
      [python, os.path.join(_SCRIPTS, script), f'--batch={_BATCH.value}',
       f'--input_size={_INPUT_SIZE.value}'],
      capture_output=True, text=True, check=False)
  if result.returncode != 0:
    sys.exit(f'{script} failed (exit {result.returncode}):\n'
             f'{result.stderr[-2000:]}')
  return json.loads(result.stdout.strip().splitlines()[-1])['images_per_sec']


def main(argv):
  del argv
  print(f'batch {_BATCH.value}, input {_INPUT_SIZE.value}x'
        f'{_INPUT_SIZE.value}; images/s')
  print(f'{"round":>5s}{"digits_jax":>12s}{"pytorch":>10s}{"ratio":>8s}')
  ratios = []
  for round_ in range(1, _ROUNDS.value + 1):
    ours = _images_per_sec(sys.executable, 'benchmark.py')
    theirs = _images_per_sec(_TORCH_PYTHON.value, 'torch_reference.py')
    ratios.append(ours / theirs)
    print(f'{round_:5d}{ours:12.1f}{theirs:10.1f}{ratios[-1]:8.3f}',
          flush=True)
  print(f'median ratio digits_jax / pytorch: {statistics.median(ratios):.3f}')
  print(json.dumps({'median_ratio': round(statistics.median(ratios), 3),
                    'ratios': [round(r, 3) for r in ratios],
                    'batch': _BATCH.value,
                    'input_size': int(_INPUT_SIZE.value)}))


if __name__ == '__main__':
  app.run(main)
