"""The sweep the README reports: configs/fast.py and nine variations of it,
trained together as one program (digits_jax/sweep.py).

Each member changes one thing from fast.py (or two that go together), so
the table reads as "what this change does": the learning rate, L2, dropout,
the augmentation's strength, weight averaging and label smoothing. The
members' values are taken together (sweep_mode 'zip'): member j is the
single run of fast.py with VARIATIONS[j] applied. Figures: README.md.
"""

import os
import runpy

# By path, as every config loads another (config_checks.load_config).
fast = runpy.run_path(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fast.py'))

VARIATIONS = (
    {},  # fast.py itself.
    {'learning_rate': 2e-3},
    {'learning_rate': 8e-3},
    {'l2': 0.0},
    {'l2': 2e-3},
    {'dropout_rate': 0.1},
    {'rotation_degrees': 5.0, 'zoom_range': 0.05, 'shift_range': 0.05},
    {'rotation_degrees': 15.0, 'zoom_range': 0.15, 'shift_range': 0.15},
    {'ema_decay': 0.999},
    {'ema_decay': 0.999, 'label_smoothing': 0.1},
)

SWEPT = ('learning_rate', 'l2', 'dropout_rate', 'rotation_degrees',
         'zoom_range', 'shift_range', 'ema_decay', 'label_smoothing')


def get_config():
  config = fast['get_config']()
  config.sweep = ' '.join(
      f'{key}=' + ','.join(repr(float(v.get(key, config[key])))
                           for v in VARIATIONS)
      for key in SWEPT)
  config.sweep_mode = 'zip'
  return config
