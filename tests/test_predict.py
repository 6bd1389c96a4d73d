"""--mode=predict: image files and .npy digits predicted as eval computes them;
bad files get one line each."""

import json

import numpy as np
from PIL import Image
import pytest

from helpers import run_main

from digits_jax import config_checks
from digits_jax import input_pipeline
from digits_jax import evaluation
from digits_jax import members as members_lib
from digits_jax import restore
from digits_jax import platform as platform_lib

from conftest import PREDICT_MODEL_OVERRIDES

NUM_DIGITS = 200
FLAGS = [f'--config.{k}={v}' for k, v in PREDICT_MODEL_OVERRIDES.items()]


pytestmark = pytest.mark.slow  # Trains the model it predicts with.


@pytest.fixture(scope='module')
def predict_run(predict_model, tmp_path_factory):
  """The session's predict model (conftest.py), and its real test digits
  written out as large dark-on-light PNGs."""
  config, workdir = predict_model
  config = config.copy_and_resolve_references()  # The session's stays.
  config.max_test_examples = NUM_DIGITS
  digits = input_pipeline.load_splits(config).test_images
  png_dir = tmp_path_factory.mktemp('predict') / 'png'
  png_dir.mkdir()
  for i, digit in enumerate(digits):
    # White paper, black ink, 3x larger than MNIST.
    Image.fromarray(255 - digit).resize((84, 84), Image.NEAREST).save(
        png_dir / f'{i:04d}.png')
  return config, workdir, digits, png_dir


def test_predicting_png_files_matches_evaluating_the_digits(predict_run,
                                                            tmp_path):
  config, workdir, digits, png_dir = predict_run
  restored = restore.restore_best(*members_lib.resolve(config), workdir,
                                  platform_lib.current())
  direct = evaluation.Evaluator(restored.model, restored.preprocess,
                                config.eval_batch_size,
                                restored.platform).logits(
                                    restored.state, digits).argmax(-1)
  output = tmp_path / 'predictions.json'
  result = run_main('--config=configs/tiny.py', f'--workdir={workdir}',
                   *FLAGS, '--mode=predict',
                   f'--images={png_dir}', f'--output={output}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(output) as f:
    predictions = json.load(f)['predictions']
  assert len(predictions) == NUM_DIGITS
  from_png = np.array([p['digit'] for p in predictions])
  assert (from_png == direct).mean() >= 0.99
  assert len(result.stdout.splitlines()) == NUM_DIGITS


def test_bad_files_get_one_line_each_and_the_rest_is_predicted(predict_run,
                                                               tmp_path):
  config, workdir, digits, png_dir = predict_run
  good = png_dir / '0000.png'
  (tmp_path / 'empty.png').write_bytes(b'')
  (tmp_path / 'notes.png').write_text('not an image')
  data = good.read_bytes()
  (tmp_path / 'truncated.png').write_bytes(data[:len(data) // 2])
  Image.new('L', (8000, 8000), 255).save(tmp_path / 'huge.png')
  np.save(tmp_path / 'digits.npy', digits[:3])
  bad = ['missing.png', 'empty.png', 'notes.png', 'truncated.png', 'huge.png']
  specs = [str(good), str(tmp_path / 'digits.npy')] + [
      str(tmp_path / name) for name in bad]
  result = run_main('--config=configs/tiny.py', f'--workdir={workdir}',
                   *FLAGS, '--mode=predict',
                   '--images=' + ','.join(specs))
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == len(bad), errors
  for name, error in zip(bad, errors):
    assert name in error
  assert len(result.stdout.splitlines()) == 4  # The PNG and 3 .npy digits.
