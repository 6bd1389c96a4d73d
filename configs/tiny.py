"""A few seconds of training on a small real subset: for tests and smoke runs."""

from configs import improved


def get_config():
  config = improved.get_config()
  config.max_train_examples = 1200
  config.max_test_examples = 500
  config.validation_size = 200
  config.batch_size = 50
  config.eval_batch_size = 250
  config.num_epochs = 2
  config.steps_per_dispatch = 4
  config.checkpoints_to_keep = 2
  return config
