"""Classic LeNet-5 without augmentation or regularization: the article's 98.74%."""

from configs import improved


def get_config():
  config = improved.get_config()
  config.model = 'lenet5'
  config.dropout_rate = 0.0  # LeNet-5 has no dropout.
  config.augment = False
  config.l2 = 0.0
  # The article's baseline trains at a fixed learning rate.
  config.plateau_factor = 1.0
  return config
