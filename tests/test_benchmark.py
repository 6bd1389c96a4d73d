"""scripts/benchmark.py: its figures, and that its reference is our model."""

import json
import subprocess
import sys

import pytest

from helpers import ROOT, cli_env

pytestmark = pytest.mark.slow  # Each test runs the benchmark in a process.


def _benchmark(*args):
  result = subprocess.run(
      [sys.executable, 'scripts/benchmark.py', *args], cwd=ROOT,
      env=cli_env(), capture_output=True, text=True, timeout=600,
      check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_benchmark_reports_its_figures_against_the_same_function():
  """The improved LeNet, with the check that the reference (stock Flax
  layers, XLA's default convolutions) computes what ImprovedLeNet computes,
  or its speed ratio would mean nothing."""
  report = _benchmark('--batch=8', '--steps=1', '--windows=1',
                      '--input_size=28')
  for key in ('images_per_sec', 'reference_images_per_sec', 'ratio', 'gflops',
              'matmul_gflops', 'compile_s', 'flops_per_image'):
    assert report[key] > 0, key
  assert report['ratio'] == pytest.approx(
      report['images_per_sec'] / report['reference_images_per_sec'],
      rel=1e-2)
  assert set(report['reference_difference']) == {'logits', 'gradients'}
  assert max(report['reference_difference'].values()) < 1e-4


def test_benchmark_times_ensembles_in_both_forms_against_one_model():
  report = _benchmark('--model=lenet5', '--batch=16', '--steps=4',
                      '--windows=1', '--num_models=1,2', '--sweep')['ensembles']
  assert set(report) == {'K=1', 'K=2 side by side', 'K=2 vmap',
                         'K=1 sweep', 'K=2 sweep'}
  assert report['K=1']['per_member_vs_k1'] == 1.0
  for name, r in report.items():
    assert r['images_per_sec_per_member'] > 0, name
    assert r['per_member_vs_k1'] == pytest.approx(
        r['images_per_sec_per_member']
        / report['K=1']['images_per_sec_per_member'], rel=1e-2), name
