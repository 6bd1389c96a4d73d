"""The accelerator path, run on the CPU: the choices platform.py makes for a
GPU or TPU (scan rolled, a whole epoch per dispatch, XLA's default compiler
options, the models' plain weight gradients) train the model the CPU path
trains."""

import jax
import numpy as np
import pytest

from helpers import latest_checkpoint

from digits_jax import evaluation
from digits_jax import members as members_lib
from digits_jax import platform as platform_lib
from digits_jax import train


@pytest.mark.parametrize('backend, configured, expected', [
    ('cpu', -1, 8), ('gpu', -1, 20), ('tpu', -1, 20),
    ('cpu', 0, 20), ('gpu', 0, 20), ('gpu', 4, 4), ('cpu', 50, 20)])
def test_steps_per_dispatch(backend, configured, expected):
  platform = platform_lib.Platform(backend)
  assert platform.steps_per_dispatch(configured, 20) == expected


@pytest.mark.parametrize('backend', ['gpu', 'tpu'])
def test_accelerators_keep_xlas_defaults_and_a_rolled_scan(backend):
  for conv_impl in platform_lib.CONV_IMPLS:
    platform = platform_lib.Platform(backend, conv_impl)
    assert platform.compiler_options is None
    assert not platform.cpu_weight_gradients and not platform.unroll_scan


def _trained_state(config, workdir, platform):
  train.train_and_evaluate(*members_lib.resolve(config), workdir, platform)
  return latest_checkpoint(config, workdir, platform)


def _close(state, reference) -> bool:
  """Float32 tolerance: the two programs use other convolution algorithms
  and fuse differently, so the gradients differ in their last bits, and
  Adam's first steps (update ~ lr * m / sqrt(v)) turn that into up to a
  sizeable part of lr = 1e-3 on the few near-zero gradients (measured: at
  most 0.1% of a layer's parameters beyond 5e-5 after 3 steps). A different
  batch, key, augmentation or step count moves most parameters."""
  for a, b in zip(jax.tree.leaves(state.params),
                  jax.tree.leaves(reference.params)):
    difference = np.abs(np.asarray(a) - np.asarray(b))
    if (np.mean(difference > 5e-5 + 1e-4 * np.abs(b)) > 0.01
        or difference.max() > 1e-3):
      return False
  return all(np.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(
      jax.tree.leaves(state.batch_stats),
      jax.tree.leaves(reference.batch_stats)))


@pytest.mark.slow
def test_the_accelerator_path_trains_the_cpu_paths_model(tiny_config,
                                                         tmp_path,
                                                         monkeypatch):
  # Every evaluation program's compiler options, in the order built.
  evaluator_options = []
  evaluator = evaluation.Evaluator

  def spy(model, preprocess, batch_size, platform, *args, **kwargs):
    evaluator_options.append(platform.compiler_options)
    return evaluator(model, preprocess, batch_size, platform, *args,
                     **kwargs)

  monkeypatch.setattr(evaluation, 'Evaluator', spy)
  tiny_config.num_epochs = 1
  tiny_config.num_train_steps = 3
  cpu = tiny_config.copy_and_resolve_references()
  cpu.steps_per_dispatch = 2  # Two dispatches: 2 and 1 unrolled steps.
  accelerator = tiny_config.copy_and_resolve_references()
  accelerator.steps_per_dispatch = 0  # One rolled scan over the 3 steps.
  cpu_step, cpu_state = _trained_state(
      cpu, str(tmp_path / 'cpu'), platform_lib.Platform('cpu', 'auto'))
  cpu_options, evaluator_options[:] = list(evaluator_options), []
  gpu_step, gpu_state = _trained_state(
      accelerator, str(tmp_path / 'gpu'), platform_lib.Platform('gpu', 'auto'))
  assert cpu_step == gpu_step == 3
  # Validation and the test evaluation compile for the platform that
  # trains, not for the process's: the CPU's options on the CPU path, XLA's
  # defaults (None) on the accelerator path.
  assert len(cpu_options) == 2 and all(cpu_options), cpu_options
  assert evaluator_options == [None, None]
  assert _close(gpu_state, cpu_state)
  # The tolerance has teeth: one augmentation range changed on the CPU path
  # is far outside it.
  control = cpu.copy_and_resolve_references()
  control.shift_range = 0.0
  _, control_state = _trained_state(
      control, str(tmp_path / 'control'), platform_lib.Platform('cpu'))
  assert not _close(control_state, cpu_state)
