"""Classic LeNet-5 without augmentation or regularization: the article's 98.74%."""

import os
import runpy

# By path, as every config loads another (config_checks.load_config).
improved = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'improved.py'))


def get_config():
  config = improved['get_config']()
  config.model = 'lenet5'
  config.dropout_rate = 0.0  # LeNet-5 has no dropout.
  config.augment = False
  config.l2 = 0.0
  # The article's baseline trains at a fixed learning rate.
  config.plateau_factor = 1.0
  return config
