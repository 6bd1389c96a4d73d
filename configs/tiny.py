"""A few seconds of training on a small real subset: for tests and smoke runs."""

import os
import runpy

# By path, as every config loads another (config_checks.load_config).
improved = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'improved.py'))


def get_config():
  config = improved['get_config']()
  config.max_train_examples = 1200
  config.max_test_examples = 500
  config.validation_size = 200
  config.batch_size = 50
  config.eval_batch_size = 250
  config.num_epochs = 2
  config.steps_per_dispatch = 4
  config.checkpoints_to_keep = 2
  return config
