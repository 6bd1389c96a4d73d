"""The deeper NNX network (digits_jax/models/deep_cnn.py) with configs/fast.py's
one-cycle recipe, at MNIST's own 28x28.

From the original (Deotte, 2018): the network, its dropout 0.4, no L2, and
the augmentation (rotation 10 degrees, zoom and shift 10%, as the article's).
From fast.py: Adam under a one-cycle schedule at batch 128. The epochs are
what a CPU budget allows (README: figures); the best checkpoint is chosen
on the validation split only.
"""

import os
import runpy

# By path, as every config loads another (config_checks.load_config).
fast = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fast.py'))


def get_config():
  config = fast['get_config']()
  config.model = 'deep_cnn'
  config.dropout_rate = 0.4
  config.l2 = 0.0
  config.num_epochs = 8
  return config
