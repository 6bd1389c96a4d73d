"""An ensemble of 6 improved LeNets, trained together, for the best test
accuracy in about 90 minutes of the 2-core development CPU.

Each member is configs/fast.py's recipe (MNIST's 28x28 input, batch 128, a
one-cycle schedule) run for 16 epochs instead of 6; member i is the single
run with seed i. Fewer, longer-trained members: 8 members of 10 epochs
(the same compute within 20%) reached 99.65% with members at 99.60 +- 0.03,
too alike for the ensemble to gain much (docs/ensembles.md). The ensemble predicts the mean of the members'
probabilities, and its best checkpoint is chosen by the ensemble's
validation accuracy (the test set never chooses anything). Figures: README.md.
"""

import os
import runpy

# By path, as every config loads another (config_checks.load_config).
fast = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fast.py'))


def get_config():
  config = fast['get_config']()
  config.num_models = 6
  config.num_epochs = 16
  return config
