"""scripts/device_kit.py and scripts/device_check.py: what they read and check.

The check itself runs on an accelerator (docs/device.md); here, in
milliseconds, the parts that decide what a lease brings back: the test
outcomes read from a run that may have been killed, fast.py's figures read
from its files, and the kit's rule that every requirement is carried or in
the machine's image.
"""

import importlib.util
import json
import os

import pytest

from helpers import ROOT


def _script(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, 'scripts', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


device_check = _script('device_check')
device_kit = _script('device_kit')


def test_test_outcomes_are_read_from_xdist_and_plain_verbose_lines():
  # A run killed at its limit: no closing line, the outcomes so far.
  output = '\n'.join([
      '[gw0] [ 10%] PASSED tests/test_optim.py::test_plateau_scale',
      '[gw1] [ 20%] FAILED tests/test_models.py::test_logits_shape[lenet5-28]',
      'tests/test_platform.py::test_steps_per_dispatch[cpu-0-20] PASSED',
      'tests/test_train.py::test_bfloat16 ERROR',
      '[gw0] [ 30%] SKIPPED tests/test_models.py::test_cpu_only',
      'some log line mentioning PASSED without a test id',
  ])
  assert device_check.test_outcomes(output) == {
      'counts': {'passed': 2, 'failed': 1, 'error': 1, 'skipped': 1},
      'not_passed': ['tests/test_models.py::test_logits_shape[lenet5-28]',
                     'tests/test_train.py::test_bfloat16'],
  }


def test_fast_run_report_splits_the_first_epochs_compilation_off(tmp_path):
  epochs = [{'epoch': i + 1, 'epoch_seconds': s, 'val_accuracy': a,
             'images_per_sec': 1000 * (i + 1)}
            for i, (s, a) in enumerate([(9.0, 0.98), (2.0, 0.99),
                                        (2.2, 0.995)])]
  (tmp_path / 'metrics.jsonl').write_text(
      ''.join(json.dumps(e) + '\n' for e in epochs))
  (tmp_path / 'eval_test.json').write_text(
      json.dumps({'accuracy': 0.9951, 'loss': 0.017}))
  report = device_check.fast_run_report(str(tmp_path))
  assert report['test_accuracy'] == 0.9951
  assert report['epochs'] == 3
  assert report['best_val_accuracy'] == 0.995
  # The first epoch less the later epochs' median.
  assert report['compile_seconds_estimate'] == pytest.approx(9.0 - 2.2)
  assert report['training_seconds'] == pytest.approx(13.2)
  assert report['images_per_sec_after_epoch_1'] == [2000, 3000]
  # A run that wrote nothing (it failed or was killed before an epoch).
  assert device_check.fast_run_report(str(tmp_path / 'none')) == {}


def test_the_kit_carries_every_requirement_the_image_lacks(monkeypatch):
  device_kit.check_requirements_covered()  # This venv: all covered.
  monkeypatch.setattr(device_kit, 'CARRIED', tuple(
      name for name in device_kit.CARRIED if name != 'promise'))
  with pytest.raises(SystemExit, match='tensorflow-datasets needs promise'):
    device_kit.check_requirements_covered()


def test_the_device_command_fits_the_tool_and_names_the_kit():
  command = device_kit.device_command()
  assert len(command) <= 2000  # The device tool's limit on a command.
  assert f'--data_dir={device_kit.KIT}/data' in command
  assert '--out=$OUT' in command
  assert 'pip install' in command and '--no-index' in command
  # The check's parts fit the lease's ~8 minutes.
  assert sum(device_check.LIMITS.values()) <= 8.5 * 60
