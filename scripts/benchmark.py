r"""Training throughput of the improved LeNet: this trainer against a reference.

Both train the same model with the same on-device augmentation, side by side
in one process:

  * digits_jax: the dataset on the device as uint8, `--steps` train steps per
    dispatch under lax.scan (unrolled on CPU), donated state, metrics read
    back once per dispatch, compiled as digits_jax/platform.py decides for
    this backend and `--conv_impl` (auto: on CPU, Eigen's convolutions
    rather than YNNPACK's);
  * reference: the Flax examples' shape: the same architecture written with
    Flax's stock layers (`nn.Conv`, `nn.max_pool`, `nn.Dropout`), XLA's
    default compiler options, numpy batches from the host, one jitted step
    per batch, metrics read back every step.

  python scripts/benchmark.py --batch=128 --input_size=28 --steps=8

Before timing, checks that the reference computes the same function as the
trainer's model (`check_reference`: logits and gradients, float32). Prints
a table, then one JSON line with images_per_sec, reference_images_per_sec,
ratio, gflops, matmul_gflops and that check's reference_difference.

Ensembles (`--num_models=1,4,8`): the trainer's step over K members, each
K > 1 in both forms (members side by side in the program, and jax.vmap over
them), timed side by side; prints images/s per member and the ratio to K=1
instead of the reference comparison. `--steps` is then the model steps per
dispatch, shared by the members as the trainer does. With `--sweep`, also
a sweep of K members in the trainer's form (digits_jax/sweep.py: every
traced key its own value per member) beside the ensemble of K.
"""

import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from digits_jax import config_checks  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import members as members_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import recipe  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from digits_jax import platform as platform_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_INPUT_SIZE = flags.DEFINE_enum('input_size', '28', ['28', '32'],
                                'Model input: 28, or 32 (padded, as the '
                                'article).')
_STEPS = flags.DEFINE_integer('steps', 8, 'Train steps per timed window (and '
                              'per dispatch for digits_jax).')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows; the median '
                                'is reported.')
_MODEL = flags.DEFINE_string('model', 'improved_lenet', 'Model name.')
_CONV_IMPL = flags.DEFINE_enum('conv_impl', 'auto', platform_lib.CONV_IMPLS,
                                'Convolutions of the digits_jax path.')
_NUM_MODELS = flags.DEFINE_list(
    'num_models', [], 'Ensemble sizes to time side by side (e.g. 1,4,8); '
    'empty: the comparison with the reference.')
_SWEEP = flags.DEFINE_bool(
    'sweep', False, 'With --num_models: also time a sweep of K members '
    '(learning rate, L2, dropout, augmentation and label smoothing traced '
    'per member) in the trainer\'s form, beside the ensemble of K.')
_DTYPE = flags.DEFINE_enum('compute_dtype', 'float32',
                           ['float32', 'bfloat16'], 'Compute dtype.')

NUM_IMAGES = 8192  # Synthetic uint8 digits; the speed does not depend on them.
# MNIST's pixel statistics, for the standardization every path does.
# MNIST's shape and classes, and pixel statistics near its own.
DATA = {'image_shape': [28, 28, 1], 'num_classes': 10, 'pixel_mean': 33.3,
        'pixel_std': 78.6}
# The reference, given to the trainer as a user gives their own module.
REFERENCE_MODEL = '__main__:ReferenceImprovedLeNet'


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
  """This machine's float32 matmul rate under jax.jit: the roofline."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * n**3 / statistics.median(times) / 1e9


class ReferenceImprovedLeNet(nn.Module):
  """digits_jax.models.improved_lenet as one would write it with Flax's stock
  layers, as the Flax examples do (same parameters, same function)."""
  L2_REGULARIZED = ('conv1', 'conv3')
  dropout_rate: float = 0.25

  @nn.compact
  def __call__(self, x, *, train: bool):
    conv = functools.partial(nn.Conv, padding='VALID',
                             kernel_init=nn.initializers.glorot_uniform())
    dense = functools.partial(nn.Dense, use_bias=False,
                              kernel_init=nn.initializers.glorot_uniform())
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=0.99, epsilon=1e-3)
    dropout = functools.partial(nn.Dropout, self.dropout_rate,
                                deterministic=not train)
    pool = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))
    x = nn.relu(conv(32, (5, 5), name='conv1')(x))
    x = conv(32, (5, 5), use_bias=False, name='conv2')(x)
    x = dropout()(pool(nn.relu(norm(name='bn2')(x))))
    x = nn.relu(conv(64, (3, 3), name='conv3')(x))
    x = conv(64, (3, 3), use_bias=False, name='conv4')(x)
    x = dropout()(pool(nn.relu(norm(name='bn4')(x))))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(norm(name='bn_fc1')(dense(256, name='fc1')(x)))
    x = nn.relu(norm(name='bn_fc2')(dense(128, name='fc2')(x)))
    x = nn.relu(norm(name='bn_fc3')(dense(84, name='fc3')(x)))
    x = dropout()(x)
    return nn.Dense(10, kernel_init=nn.initializers.glorot_uniform(),
                    name='logits')(x)


def check_reference(config, platform: platform_lib.Platform) -> dict:
  """How far the reference's function is from ours: inference logits and the
  training gradients of one batch, each compiled as its path compiles it
  (ours as training does, the reference with XLA's defaults). Raises if
  they differ beyond float32 rounding: a ratio against another function
  would mean nothing."""
  x = jax.random.normal(jax.random.key(1), (8, config.input_size,
                                            config.input_size, 1))
  ours = recipe.build(config, platform, DATA)[0]
  reference = recipe.build(reference_config(config), platform, DATA)[0]
  params, batch_stats = ours.init(jax.random.key(0))
  if (jax.tree.structure(reference.init(jax.random.key(0)))
      != jax.tree.structure((params, batch_stats))):
    raise SystemExit('the reference model has other parameters than ours')
  variables = {'params': params, 'batch_stats': batch_stats}

  def training_loss(model, params):
    logits, _ = model.apply_train(params, batch_stats, x, jax.random.key(2))
    return jnp.sum(jnp.sin(logits))

  def relative(got, want):
    # Float32 rounding of the sums is relative to the array's scale, not to
    # each element (a gradient of 0.2 beside ones of 20 differs by 6e-5).
    return max(float(np.abs(g - w).max() / max(1.0, np.abs(w).max()))
               for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)))

  paths = ((ours, platform.compiler_options), (reference, None))
  logits = [jax.jit(model.apply_eval,
                    compiler_options=options)(variables, x)
            for model, options in paths]
  grads = [jax.jit(jax.grad(functools.partial(training_loss, model)),
                   compiler_options=options)(params)
           for model, options in paths]
  difference = {'logits': relative(*logits), 'gradients': relative(*grads)}
  if max(difference.values()) > 1e-4:
    raise SystemExit(f'the reference computes another function: {difference}')
  return difference


def ensembles(config, images, labels, batch, windows):
  """Images/s per member for each K of --num_models, both forms."""
  sizes = sorted({int(k) for k in _NUM_MODELS.value})
  timed = {}
  trainers_form = platform_lib.current(_CONV_IMPL.value).vmap_members
  for k in sizes:
    for vmapped in ((True,) if k == 1 else (False, True)):
      name = f'K={k}' + ('' if k == 1 else
                         (' vmap' if vmapped else ' side by side'))
      timed[name] = (k, trainer_path(config, images, labels, batch,
                                     _STEPS.value, num_models=k,
                                     vmapped=vmapped))
    if _SWEEP.value:
      timed[f'K={k} sweep'] = (k, trainer_path(
          sweep_config(config, k), images, labels, batch, _STEPS.value,
          vmapped=trainers_form))
  for _ in range(windows):
    for _, path in timed.values():
      path.times.append(path.window())
  rates = {name: path.steps * batch / statistics.median(path.times)
           for name, (k, path) in timed.items()}  # Images/s per member.
  base = rates.get('K=1')
  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind} x'
        f'{jax.device_count()} | host: {platform.machine()}, '
        f'{os.cpu_count()} CPUs | jax {jax.__version__}')
  print(f'model {config.model}, input {config.input_size}x'
        f'{config.input_size}, batch {batch} per member, median of '
        f'{windows} windows; trainer\'s form here: '
        f'{"vmap" if platform_lib.current().vmap_members else "side by side"}')
  print(f'{"":22s}{"images/s/member":>16s}{"all members":>13s}'
        f'{"vs K=1":>8s}{"compile s":>11s}')
  results = {}
  for name, (k, path) in timed.items():
    ratio = rates[name] / base if base else float('nan')
    print(f'{name:22s}{rates[name]:16.1f}{rates[name] * k:13.1f}'
          f'{ratio:8.2f}{path.compile_s:11.1f}')
    results[name] = {'images_per_sec_per_member': round(rates[name], 1),
                     'per_member_vs_k1': round(ratio, 3),
                     'compile_s': round(path.compile_s, 1)}
  print(json.dumps({'ensembles': results, 'batch': batch,
                    'input_size': config.input_size,
                    'device': device.device_kind,
                    'platform': device.platform}))


def sweep_config(config, k: int):
  """`config` as a sweep of `k` members taken together, each traced key
  (but the moving average's, which an ensemble would keep too) its own
  value per member."""
  spread = lambda low, high: ','.join(
      repr(float(v)) for v in np.linspace(low, high, k))
  config = config.copy_and_resolve_references()
  dropout = (f'dropout_rate={spread(0.1, 0.4)} '
             if config.model == 'improved_lenet' else '')  # LeNet-5 has none.
  config.sweep = (f'learning_rate={spread(5e-4, 4e-3)} l2={spread(0, 1e-3)} '
                  f'{dropout}rotation_degrees={spread(5, 15)} '
                  f'zoom_range={spread(0.05, 0.15)} '
                  f'shift_range={spread(0.05, 0.15)} '
                  f'label_smoothing={spread(0, 0.1)}')
  config.sweep_mode = 'zip'
  return config


def _flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0]
  return float(analysis.get('flops', 0.0)) if analysis else 0.0


class Timed:
  """A compiled training path: its compile time, FLOPs per image (None where
  XLA's count would be wrong), and `window()`, which trains `steps` steps
  (of every member) and returns the seconds taken."""

  def __init__(self, compile_s, flops_per_image, window, steps):
    self.compile_s = compile_s
    self.flops_per_image = flops_per_image
    self.window = window
    self.steps = steps
    self.times = []


def trainer_path(config, images, labels, batch, steps, num_models: int = 1,
                 vmapped: bool | None = None,
                 platform: platform_lib.Platform | None = None) -> Timed:
  """The trainer's own program (train.train_program) over `num_models`
  members (one model by default; a sweep config's own members), vmapped or
  side by side (`vmapped`; None: as the platform decides), on one device, compiled as platform.py decides for this backend and
  --conv_impl: the dataset on the device, `steps` model steps per dispatch
  under lax.scan (shared by the members, as the trainer shares them),
  donated state, metrics read back once per dispatch. `platform`: other
  choices than this backend's (scripts/experiments/cpu_choices.py)."""
  config = config.copy_and_resolve_references()
  if not config.sweep:
    config.num_models = num_models
  config, members = members_lib.resolve(config)
  platform = dataclasses.replace(
      platform or platform_lib.current(_CONV_IMPL.value),
      member_vmap=vmapped)
  total_steps = 10_000  # A one-cycle schedule's length; any will do.
  init_key, shuffle_key, train_key = members.keys()
  devices = parallel.DataParallel('mesh', tuple(jax.devices()[:1]),
                                  member_devices=int(members.stacked))
  program = train.build_program(config, members, devices, platform, DATA,
                                total_steps)
  chunk = program.update
  state = devices.place_state(program.init_state(members, init_key))
  if devices.ensemble:
    train_key = devices.place_state(train_key)
  dispatch = max(1, steps // members.num_models)
  images, labels = devices.replicate(images), devices.replicate(labels)

  def batch_indices(epoch):
    return devices.shard_batch_indices(members.epoch_batches(
        shuffle_key, epoch, len(images), batch)[:dispatch])

  start = time.perf_counter()
  compiled = chunk.lower(state, images, labels, batch_indices(0),
                         train_key).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state, 'epoch': 0}

  def window():
    holder['epoch'] += 1
    indices = batch_indices(holder['epoch'])
    indices.block_until_ready()
    begin = time.perf_counter()
    holder['state'], metrics = compiled(holder['state'], images, labels,
                                        indices, train_key)
    jax.device_get(metrics)  # One read-back per dispatch.
    return time.perf_counter() - begin

  window()  # Warm-up.
  # XLA's cost analysis counts a while loop's body once, and off the CPU this
  # program's steps run in one (the scan is unrolled only on CPU): its count
  # would be too low there. The model's FLOPs come from the reference's
  # program instead (see main).
  return Timed(compile_s, None, window, dispatch)


def reference_config(config):
  """`config` with the reference model in place of the trainer's."""
  config = config.copy_and_resolve_references()
  config.model = REFERENCE_MODEL
  return config


def reference_path(config, images, labels, batch, steps) -> Timed:
  if config.model == 'improved_lenet':
    # The same function (check_reference), as the Flax examples write it.
    config = reference_config(config)
  model, tx = recipe.build(config, platform_lib.current(_CONV_IMPL.value),
                           DATA)
  preprocess = recipe.preprocessing(config, DATA)
  state = steps_lib.create_train_state(model, tx, jax.random.key(0))
  step = jax.jit(recipe.train_step_fn(config, model, tx, preprocess),
                 donate_argnums=(0,))
  key = jax.random.key(1)
  rng = np.random.default_rng(0)

  def host_batch():
    idx = rng.choice(len(images), batch, replace=False)
    return {'image': images[idx], 'label': labels[idx]}

  start = time.perf_counter()
  compiled = step.lower(state, host_batch(), key).compile()
  compile_s = time.perf_counter() - start
  holder = {'state': state}

  def window():
    begin = time.perf_counter()
    for _ in range(steps):
      holder['state'], metrics = compiled(holder['state'], host_batch(), key)
      jax.device_get(metrics)  # The examples log every step's metrics.
    return time.perf_counter() - begin

  window()  # Warm-up.
  return Timed(compile_s, _flops(compiled) / batch, window, steps)


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  config = config_checks.load_config('improved')
  config.model = _MODEL.value
  if config.model == 'lenet5':
    config.dropout_rate = 0.0  # It has no dropout (config_checks).
  config.input_size = int(_INPUT_SIZE.value)
  config.compute_dtype = _DTYPE.value
  batch, steps, windows = _BATCH.value, _STEPS.value, _WINDOWS.value
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_IMAGES, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, NUM_IMAGES, dtype=np.int32)
  if _NUM_MODELS.value:
    ensembles(config, images, labels, batch, windows)
    return

  trainer_platform = platform_lib.current(_CONV_IMPL.value)
  reference_difference = (
      check_reference(config, trainer_platform)
      if config.model == 'improved_lenet' and
      config.compute_dtype == 'float32' else {})
  matmul = matmul_gflops()
  paths = {'digits_jax': trainer_path(config, images, labels, batch, steps),
           'reference': reference_path(config, images, labels, batch, steps)}
  # Windows alternate between the two paths, so that a change in the
  # machine's speed during the run (common on shared VMs) touches both.
  for _ in range(windows):
    for path in paths.values():
      path.times.append(path.window())
  # The model's FLOPs per training image, for both paths' GFLOP/s: XLA's
  # cost analysis of the reference's step (one step, no loops).
  flops_per_image = paths['reference'].flops_per_image
  results = {}
  for name, path in paths.items():
    images_per_sec = path.steps * batch / statistics.median(path.times)
    results[name] = {
        'images_per_sec': images_per_sec, 'compile_s': path.compile_s,
        'gflops': images_per_sec * flops_per_image / 1e9}
  ours, reference = results['digits_jax'], results['reference']
  peak_rss_mb = _peak_rss_mb()

  device = jax.devices()[0]
  print(f'device: {device.platform} {device.device_kind} x{jax.device_count()}'
        f' | host: {platform.machine()}, {os.cpu_count()} CPUs | jax '
        f'{jax.__version__}')
  print(f'model {config.model}, input {config.input_size}x'
        f'{config.input_size}, batch {batch}, {steps} steps per window, '
        f'median of {windows} windows, {config.compute_dtype}')
  print(f'float32 matmul: {matmul:.1f} GFLOP/s')
  print(f'model: {flops_per_image / 1e6:.1f} MFLOP per training image (XLA '
        'cost analysis)')
  print(f'{"":12s}{"images/s":>10s}{"compile s":>11s}{"GFLOP/s":>9s}')
  for name, r in results.items():
    print(f'{name:12s}{r["images_per_sec"]:10.1f}{r["compile_s"]:11.1f}'
          f'{r["gflops"]:9.1f}')
  print(f'peak memory (process RSS, both paths): {peak_rss_mb:.0f} MB')
  ratio = ours['images_per_sec'] / reference['images_per_sec']
  print(f'ratio digits_jax / reference: {ratio:.2f}')
  if reference_difference:
    print('the reference computes our function: largest relative '
          f'difference {max(reference_difference.values()):.1e}')
  print(json.dumps({
      'images_per_sec': round(ours['images_per_sec'], 1),
      'reference_images_per_sec': round(reference['images_per_sec'], 1),
      'ratio': round(ratio, 3),
      'gflops': round(ours['gflops'], 2),
      'reference_gflops': round(reference['gflops'], 2),
      'matmul_gflops': round(matmul, 1),
      'compile_s': round(ours['compile_s'], 1),
      'peak_rss_mb': round(peak_rss_mb),
      'flops_per_image': flops_per_image,
      'reference_difference': reference_difference,
      'batch': batch, 'input_size': config.input_size, 'steps': steps,
      'device': device.device_kind, 'platform': device.platform,
      'jax': jax.__version__,
  }))


if __name__ == '__main__':
  app.run(main)
