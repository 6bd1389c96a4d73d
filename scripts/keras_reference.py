r"""Keras training throughput of the same model: the article's own stack.

The improved LeNet-5 as the article writes it in Keras (Conv-Conv-BatchNorm-
ReLU-MaxPool-Dropout blocks of 32 and 64 filters, Dense 256/128/84 with
BatchNorm, dropout 0.25, L2 5e-4 on the first convolution of each block),
trained by `model.fit` with Adam, each image warped on the fly by Keras'
preprocessing layers (rotation 10 degrees, zoom and shift 0.1: Keras 3 has
no ImageDataGenerator) inside the compiled step. Same batch and input as
`scripts/benchmark.py` and `scripts/torch_reference.py`.

TensorFlow is not a dependency of digits_jax; run this in an environment of
its own:

  python3 -m venv /tmp/kerasvenv && /tmp/kerasvenv/bin/pip install \
      tensorflow keras absl-py
  /tmp/kerasvenv/bin/python scripts/keras_reference.py --batch=128

Prints a line, then one JSON line with images_per_sec.
"""

import json
import os
import platform
import statistics
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
from keras import layers  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size.')
_INPUT_SIZE = flags.DEFINE_integer('input_size', 28, '28, or 32 (padded).')
_STEPS = flags.DEFINE_integer('steps', 8, 'Train steps per timed window.')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows (median shown).')

NUM_IMAGES = 8192
WARMUP_STEPS = 8  # tf.function's tracing and compilation, then settling.


def improved_lenet(size: int) -> keras.Model:
  """The article's network, with the augmentation in front of it."""
  l2 = keras.regularizers.l2(5e-4)
  bn = lambda: layers.BatchNormalization(momentum=0.99, epsilon=1e-3)
  return keras.Sequential([
      keras.Input((size, size, 1)),
      layers.RandomRotation(10 / 360, fill_mode='constant'),
      layers.RandomZoom(0.1, fill_mode='constant'),
      layers.RandomTranslation(0.1, 0.1, fill_mode='constant'),
      layers.Rescaling(1 / 78.6, offset=-33.3 / 78.6),
      layers.Conv2D(32, 5, activation='relu', kernel_regularizer=l2),
      layers.Conv2D(32, 5, use_bias=False), bn(), layers.ReLU(),
      layers.MaxPooling2D(2), layers.Dropout(0.25),
      layers.Conv2D(64, 3, activation='relu', kernel_regularizer=l2),
      layers.Conv2D(64, 3, use_bias=False), bn(), layers.ReLU(),
      layers.MaxPooling2D(2), layers.Dropout(0.25),
      layers.Flatten(),
      layers.Dense(256, use_bias=False), bn(), layers.ReLU(),
      layers.Dense(128, use_bias=False), bn(), layers.ReLU(),
      layers.Dense(84, use_bias=False), bn(), layers.ReLU(),
      layers.Dropout(0.25),
      layers.Dense(10, activation='softmax'),
  ])


class _BatchTimes(keras.callbacks.Callback):
  """The wall time at the end of every training batch."""

  def __init__(self):
    super().__init__()
    self.ends = []

  def on_train_batch_end(self, batch, logs=None):
    del batch, logs
    self.ends.append(time.perf_counter())


def main(argv):
  del argv
  batch, size, steps = _BATCH.value, _INPUT_SIZE.value, _STEPS.value
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (NUM_IMAGES, 28, 28, 1)).astype(np.float32)
  pad = (size - 28) // 2
  if pad:
    images = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  labels = rng.integers(0, 10, NUM_IMAGES)
  model = improved_lenet(size)
  model.compile(optimizer=keras.optimizers.Adam(1e-3),
                loss='sparse_categorical_crossentropy', metrics=['accuracy'])
  total_steps = WARMUP_STEPS + steps * _WINDOWS.value
  times = _BatchTimes()
  model.fit(images, labels, batch_size=batch, epochs=1,
            steps_per_epoch=total_steps, shuffle=True, verbose=0,
            callbacks=[times])
  ends = times.ends[WARMUP_STEPS - 1:]
  windows = [ends[i + steps] - ends[i] for i in range(0, len(ends) - 1, steps)]
  images_per_sec = steps * batch / statistics.median(windows)
  print(f'keras {keras.__version__} (tensorflow backend), '
        f'{platform.machine()} {os.cpu_count()} CPUs: improved LeNet, input '
        f'{size}x{size}, batch {batch}: {images_per_sec:.1f} images/s')
  print(json.dumps({'images_per_sec': round(images_per_sec, 1),
                    'batch': batch, 'input_size': size,
                    'keras': keras.__version__}))


if __name__ == '__main__':
  app.run(main)
