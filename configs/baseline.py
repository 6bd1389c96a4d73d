"""Classic LeNet-5 without augmentation or regularization: the article's 98.74%."""

import os
import runpy

# The article's recipe, loaded by path: configs/ is not an installed package,
# so that a config file works from any directory.
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
