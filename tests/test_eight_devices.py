"""The checks that need 8 devices, all read from one process of 8 simulated
CPU devices (tests/multidevice/eight_devices.py, the session's
`eight_devices`): one file, so that one pytest-xdist worker reads them."""

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.across_jax]  # Reads a process's reports.


def test_one_device_mesh_and_pmap_train_the_same_model(eight_devices):
  report = eight_devices['same_model']['result']
  for mode in ('mesh', 'pmap'):
    # Float32 tolerance. Per-device BatchNorm statistics or an unaveraged
    # gradient would be off by orders of magnitude more (the loss by ~1e-2).
    assert report[mode]['step'] == 3
    assert report[mode]['loss'] < 1e-4, report
    assert report[mode]['batch_stats'] < 1e-4, report
    # Adam's first steps move each weight by about lr = 1e-3 whatever the
    # gradient's size, so a weight whose gradient is near zero turns its
    # last bits into differences of up to ~lr per step (helpers.float_drift;
    # measured 1e-4 on JAX 0.10, 6.4e-4 on one weight on 0.12, whose
    # all-reduce sums in another order); few weights may differ by more
    # than 1e-4, where a wrong gradient moves almost all of them.
    assert report[mode]['params'] < 3 * 1e-3, report
    assert report[mode]['params_drift']['beyond_1e-4'] < 0.05, report
  # The mesh program all-reduces gradients and statistics and never
  # gathers the batch onto one device.
  assert report['mesh']['all_reduce'] > 0
  assert report['mesh']['all_gather'] == 0


def test_members_on_8_devices_train_what_one_device_trains(eight_devices):
  """A sweep of 4 (multidevice/ensemble_model.py) on members x data meshes."""
  report = eight_devices['ensemble']['result']
  assert len(report) == 6
  for layout, r in report.items():
    # Float32 drift after 2 Adam steps (helpers.float_drift); the losses,
    # ~2.3, within 5e-4 (measured up to 1.1e-4). The smallest leaves hold
    # 32 parameters, so one near-zero gradient's parameter beyond 1e-4 is
    # 3.1% of its leaf (measured: at most that one).
    assert r['loss_shape'] == [2, 4], (layout, r)
    assert r['loss'] < 5e-4, (layout, r)
    assert r['params']['beyond_1e-4'] < 0.05, (layout, r)
    assert r['batch_stats']['relative'] < 0.03, (layout, r)
    # The members are a sweep's: their values travel with the state
    # exactly, their moving averages drift as the parameters do.
    assert r['hparams'] == 0, (layout, r)
    assert r['ema']['beyond_1e-4'] < 0.05, (layout, r)
    if layout.startswith('side_by_side'):
      # Each member's parameters stay on their row of the mesh. (Vmapped,
      # XLA:CPU's partitioner gathers some of the grouped convolutions'
      # operands over the members, measured 30 all-gathers at 4x2: the
      # same values, with traffic an accelerator run should look at.)
      assert r['all_gather'] == 0, (layout, r)


def test_under_pmap_each_device_gets_its_slice_of_the_global_draw(
    eight_devices):
  """The elastic field, like the affine parameters, is drawn for the global
  batch and sliced, so 8 devices augment as one does
  (multidevice/eight_devices.py: 16 images on one device and over 8)."""
  report = eight_devices['augmentation_under_pmap']['result']
  assert report['max_difference'] < 1e-3


def test_evaluation_on_the_mesh_gives_one_devices_logits(eight_devices):
  """Every member's logits of 203 images (multidevice/
  evaluation_on_the_mesh.py), computed where the state is (8 devices; a
  sweep of 4 on members x data meshes, vmapped and side by side), against
  the same program on one device: float32 rounding apart, the same."""
  report = eight_devices['evaluation_on_the_mesh']['result']
  assert len(report) == 8
  for layout, r in report.items():
    members = 1 if layout.startswith('single') else 4
    assert r['shape'] == [members, 203, 10], (layout, r)
    assert r['max_difference'] < 1e-4, (layout, r)
    if members > 1:
      assert r['members_differ'], (layout, r)  # Not one member repeated.
