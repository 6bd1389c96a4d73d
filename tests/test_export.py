"""--mode=export: the best checkpoint as a jax.export artifact that a plain
jax install loads and calls."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import special

from helpers import ROOT, assert_one_line_error, cli_env, env_without_project, run_main

from digits_jax import config_checks
from digits_jax import evaluation
from digits_jax import members as members_lib
from digits_jax import restore
from digits_jax import input_pipeline
from digits_jax import platform as platform_lib

pytestmark = [pytest.mark.slow, pytest.mark.across_jax]  # The session's trained run; a process.

# Runs with nothing but jax and numpy importable from the project: the
# artifact must not need digits_jax, flax or optax.
LOADER = r'''
import json, sys
import jax, numpy as np
with open(sys.argv[1], 'rb') as f:
  predict = jax.export.deserialize(bytearray(f.read()))
digits = np.load(sys.argv[2])
first = predict.call(digits[:7])
rest = predict.call(digits[7:])
probabilities = np.concatenate([np.asarray(first), np.asarray(rest)])
leaked = sorted(m for m in sys.modules
                if m.split('.')[0] in ('digits_jax', 'flax', 'optax'))
print(json.dumps({'probabilities': probabilities.tolist(), 'leaked': leaked,
                  'platforms': list(predict.platforms),
                  'dtype': str(probabilities.dtype)}))
'''


@pytest.fixture(scope='module')
def exported(tmp_path_factory, cli_run, mnist_data_dir):
  """The session's one-epoch run of configs/tiny.py, exported."""
  workdir, common, _ = cli_run
  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  output = tmp_path_factory.mktemp('export') / 'digits.jax'
  result = run_main(*common, '--mode=export', f'--output={output}')
  assert result.returncode == 0, result.stderr[-3000:]
  return config, workdir, output


def test_a_plain_jax_process_predicts_what_eval_computes(exported, tmp_path):
  config, workdir, output = exported
  splits = input_pipeline.load_splits(config)
  digits = splits.test_images[:50]
  np.save(tmp_path / 'digits.npy', digits)
  # Only jax and numpy on the path: not the project, not its packages.
  env = env_without_project()
  result = subprocess.run(
      [sys.executable, '-c', LOADER, str(output), str(tmp_path / 'digits.npy')],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  loaded = json.loads(result.stdout.strip().splitlines()[-1])
  assert loaded['leaked'] == []
  assert 'cpu' in loaded['platforms'] and loaded['dtype'] == 'float32'
  probabilities = np.asarray(loaded['probabilities'])

  restored = restore.restore_best(*members_lib.resolve(config), workdir,
                                  platform_lib.current())
  logits = evaluation.evaluator(restored, config).logits(restored.state,
                                                         digits)
  want = special.softmax(logits, axis=-1)
  np.testing.assert_allclose(probabilities, want, atol=1e-5)
  labels = splits.test_labels[:50]
  assert ((probabilities.argmax(-1) == labels).mean()
          == (logits.argmax(-1) == labels).mean())


def test_export_without_a_checkpoint_or_output_is_one_line(tmp_path,
                                                           exported):
  _, workdir, _ = exported
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert_one_line_error(
      run_main('--config=configs/tiny.py', f'--workdir={empty}',
               '--mode=export', f'--output={tmp_path / "x.jax"}'),
      'no checkpoints')
  assert_one_line_error(
      run_main('--config=configs/tiny.py', f'--workdir={workdir}',
               '--mode=export'), '--output')
  blocked = tmp_path / 'file'
  blocked.write_text('')
  assert_one_line_error(
      run_main('--config=configs/tiny.py', f'--workdir={workdir}',
               '--mode=export', f'--output={blocked}/digits.jax'),
      'cannot write --output')


def test_an_artifact_the_oldest_supported_jax_exported_loads_here(
    cli_run, mnist_data_dir, tmp_path):
  """The compatibility the README states: jax.export loads what a JAX up to
  about six months older serialized, so an artifact exported by the
  oldest JAX this project supports (JAX 0.10, on Python 3.11) runs on the
  newest. `DIGITS_JAX_FLOOR_PYTHON` names that Python, with the project
  installed; .ci/run sets it for the newest end's run."""
  floor = os.environ.get('DIGITS_JAX_FLOOR_PYTHON')
  if not floor:
    pytest.skip('DIGITS_JAX_FLOOR_PYTHON is not set (.ci/run sets it)')
  version = lambda python: subprocess.run(
      [python, '-c', 'import jax; print(jax.__version__)'], env=cli_env(),
      capture_output=True, text=True, check=True).stdout.strip()
  older = version(floor)
  assert older != jax.__version__, f'the floor runs this JAX ({older})'
  workdir, common, _ = cli_run
  output = tmp_path / 'digits.jax'
  result = subprocess.run(
      [floor, '-m', 'digits_jax.main', *common, '--mode=export',
       f'--output={output}'], cwd=ROOT, env=cli_env(), capture_output=True,
      text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]

  config = config_checks.load_config('tiny')
  config.data_dir = mnist_data_dir
  digits = input_pipeline.load_splits(config).test_images[:20]
  predict = jax.export.deserialize(bytearray(output.read_bytes()))
  probabilities = np.asarray(predict.call(digits))
  restored = restore.restore_best(*members_lib.resolve(config), workdir,
                                  platform_lib.current())
  want = special.softmax(
      evaluation.evaluator(restored, config).logits(restored.state, digits),
      axis=-1)
  np.testing.assert_allclose(probabilities, want, atol=1e-5,
                             err_msg=f'exported by jax {older}')
