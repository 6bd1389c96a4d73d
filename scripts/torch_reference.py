r"""PyTorch training throughput of the same model and augmentation.

The yardstick the throughput issue names: the improved LeNet-5 of
digits_jax/models.py (same layers, Keras' BatchNorm momentum and epsilon,
dropout 0.25), each image warped by its own random affine map on the fly
(rotation 10 degrees, zoom and shift 0.1, bilinear, zeros outside), Adam with
L2 on conv1 and conv3, as PyTorch users write it: eager mode, one optimizer
step per batch, the loss read back every step. `--compile`: the same with
the model under `torch.compile` (inductor), as its tutorial writes it.

PyTorch is not a dependency of digits_jax; run this in a separate
environment (here the CPU build on this machine's disk):

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install \
      torch==2.13.0 numpy absl-py
  /tmp/torchvenv/bin/python scripts/torch_reference.py --batch=128 \
      --input_size=28

Compare with `python scripts/benchmark.py` run right before or after it.
Prints a line, then one JSON line with images_per_sec.
"""

import json
import math
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_INPUT_SIZE = flags.DEFINE_integer('input_size', 28, '28, or 32 (padded).')
_STEPS = flags.DEFINE_integer('steps', 8, 'Train steps per timed window.')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows (median shown).')
_COMPILE = flags.DEFINE_bool('compile', False, 'The model under '
                             'torch.compile (inductor) instead of eager.')

NUM_IMAGES = 8192


class ImprovedLeNet(nn.Module):
  """The article's improved LeNet-5 (Keras: momentum 0.99 = 1 - 0.01)."""

  def __init__(self, input_size: int):
    super().__init__()
    bn = lambda n, d=2: (nn.BatchNorm2d if d == 2 else nn.BatchNorm1d)(
        n, eps=1e-3, momentum=0.01)
    self.features = nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ReLU(),
        nn.Conv2d(32, 32, 5, bias=False), bn(32), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3, bias=False), bn(64), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25))
    side = ((input_size - 8) // 2 - 4) // 2
    self.classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64 * side * side, 256, bias=False), bn(256, 1), nn.ReLU(),
        nn.Linear(256, 128, bias=False), bn(128, 1), nn.ReLU(),
        nn.Linear(128, 84, bias=False), bn(84, 1), nn.ReLU(),
        nn.Dropout(0.25), nn.Linear(84, 10))

  def forward(self, x):
    return self.classifier(self.features(x))


def random_affine(images: torch.Tensor) -> torch.Tensor:
  """Per-image rotation, x/y zoom and shift in one bilinear warp."""
  n, _, h, _ = images.shape
  uniform = lambda bound, center=0.0: center + bound * (
      2 * torch.rand(n) - 1)
  angle = uniform(math.radians(10))
  zoom_x, zoom_y = uniform(0.1, 1.0), uniform(0.1, 1.0)
  # affine_grid works in [-1, 1] coordinates: a shift of 10% of the image
  # is 0.2 there.
  shift_x, shift_y = uniform(0.2), uniform(0.2)
  cos, sin = torch.cos(angle), torch.sin(angle)
  theta = torch.stack([
      torch.stack([cos / zoom_x, -sin / zoom_x, -shift_x], 1),
      torch.stack([sin / zoom_y, cos / zoom_y, -shift_y], 1)], 1)
  grid = F.affine_grid(theta, list(images.shape), align_corners=False)
  del h
  return F.grid_sample(images, grid, mode='bilinear', padding_mode='zeros',
                       align_corners=False)


def main(argv):
  del argv
  batch, size = _BATCH.value, _INPUT_SIZE.value
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(
      rng.integers(0, 256, (NUM_IMAGES, 1, 28, 28), dtype=np.uint8))
  labels = torch.from_numpy(rng.integers(0, 10, NUM_IMAGES)).long()
  model = ImprovedLeNet(size)
  regularized = [model.features[0].weight, model.features[7].weight]
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
  model.train()
  forward = torch.compile(model) if _COMPILE.value else model
  pad = (size - 28) // 2

  def step():
    idx = torch.randint(0, NUM_IMAGES, (batch,))
    x = images[idx].float()
    if pad:
      x = F.pad(x, (pad, pad, pad, pad))
    x = (random_affine(x) - 33.3) / 78.6
    loss = F.cross_entropy(forward(x), labels[idx])
    loss = loss + 5e-4 * sum((w ** 2).sum() for w in regularized)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()  # Read back every step, as the usual loop logs it.

  for _ in range(3):
    step()  # Warm-up (and torch.compile's compilation).
  times = []
  for _ in range(_WINDOWS.value):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      step()
    times.append(time.perf_counter() - start)
  images_per_sec = _STEPS.value * batch / statistics.median(times)
  mode = 'torch.compile' if _COMPILE.value else 'eager'
  print(f'pytorch {torch.__version__} {mode}, {torch.get_num_threads()} '
        f'threads, {platform.machine()} {os.cpu_count()} CPUs: improved '
        f'LeNet, input {size}x{size}, batch {batch}: {images_per_sec:.1f} '
        'images/s')
  print(json.dumps({'images_per_sec': round(images_per_sec, 1),
                    'batch': batch, 'input_size': size,
                    'torch': torch.__version__, 'mode': mode}))


if __name__ == '__main__':
  app.run(main)
