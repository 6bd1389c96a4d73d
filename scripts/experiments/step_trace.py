r"""Where the trainer's own compiled step spends its time, op by op.

Runs the benchmark's trainer path (scripts/benchmark.py: the program
training runs, 8 steps per dispatch) under JAX's profiler, reads back the
trace's per-operation events (XLA:CPU's thunks: fusions, convolutions,
library calls) and prints the largest by time per training step, grouped
by the HLO operation's kind and name.

  python scripts/experiments/step_trace.py --batch=128 --input_size=28

Flags of scripts/benchmark.py (`--conv_impl`, `--compute_dtype`) apply.
"""

import collections
import gzip
import json
import os
import re
import sys
import tempfile

from absl import app
from absl import flags
import jax
import numpy as np

_SCRIPTS = os.path.abspath(os.path.join(os.path.dirname(__file__), '..'))
sys.path.insert(0, _SCRIPTS)
import benchmark  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position

_DISPATCHES = flags.DEFINE_integer('dispatches', 4, 'Traced dispatches.')
_TOP = flags.DEFINE_integer('top', 30, 'Operations shown.')


def _events(trace_dir: str) -> list[dict]:
  [path] = [os.path.join(d, f) for d, _, files in os.walk(trace_dir)
            for f in files if f.endswith('perfetto_trace.json.gz')]
  with gzip.open(path) as f:
    trace = json.load(f)
  return [e for e in trace['traceEvents'] if e.get('ph') == 'X']


def main(argv):
  del argv
  config = config_checks.load_config('improved')
  config.input_size = int(flags.FLAGS.input_size)
  config.compute_dtype = flags.FLAGS.compute_dtype
  batch, steps = flags.FLAGS.batch, flags.FLAGS.steps
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (benchmark.NUM_IMAGES, 28, 28), np.uint8)
  labels = rng.integers(0, 10, benchmark.NUM_IMAGES, np.int32)
  path = benchmark.trainer_path(config, images, labels, batch, steps)
  path.window()
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      seconds = sum(path.window() for _ in range(_DISPATCHES.value))
    events = _events(trace_dir)
  model_steps = _DISPATCHES.value * path.steps
  per_step_ms = seconds / model_steps * 1e3
  # The thunks' events carry the HLO names (fusion.12, convolution.3,...);
  # the numbered copies of one kind add up under their kind too.
  by_name = collections.Counter()
  for e in events:
    name = e.get('name', '')
    if name.startswith(('$', 'Thunk', 'PjRt', 'Execute')):
      continue
    by_name[name] += e.get('dur', 0) / 1e3 / model_steps
  by_kind = collections.Counter()
  for name, ms in by_name.items():
    by_kind[re.sub(r'[._]\d+$', '', name)] += ms
  print(f'{jax.devices()[0].device_kind}, JAX {jax.__version__}: '
        f'{per_step_ms:.1f} ms per step of {batch} images (wall)')
  print(f'\n{"operation kind":40s}{"ms/step":>9s}')
  for kind, ms in by_kind.most_common(_TOP.value):
    print(f'{kind[:40]:40s}{ms:9.2f}')
  print(f'\n{"operation":40s}{"ms/step":>9s}')
  for name, ms in by_name.most_common(_TOP.value):
    print(f'{name[:40]:40s}{ms:9.2f}')


if __name__ == '__main__':
  app.run(main)
