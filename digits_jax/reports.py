"""Pictures `--mode=eval` writes beside eval_test.json (matplotlib, PNG).

  confusion_matrix.png  the test set's confusion matrix
  misclassified.png     the misclassified test digits: true, predicted, p
  training_curves.png   train/val loss and accuracy and the LR per epoch,
                        read from the run's own metrics.jsonl
"""

import io
import json
import logging

from etils import epath
import numpy as np

from digits_jax import paths

CONFUSION = 'confusion_matrix.png'
MISCLASSIFIED = 'misclassified.png'
CURVES = 'training_curves.png'


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')  # Files only, no display.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


METRICS = 'metrics.jsonl'
# Where training sets aside lines of metrics.jsonl it cannot read.
DAMAGED_METRICS = 'metrics.jsonl.damaged'
# What every epoch's record holds (train._epoch_summary), numbers all: the
# curves and the sweep's table read them.
EPOCH_KEYS = ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy',
              'learning_rate')

log = logging.getLogger(__name__)


def parse_metrics(text: str) -> tuple[list[tuple[str, dict]], list[int]]:
  """metrics.jsonl's lines as (line, record) in order, and the numbers of
  those that are not an epoch's record (cut off by an interrupted copy or
  sync, edited by hand): the trainer writes the file whole, so a damaged
  line came from outside, and the checkpoints, not these lines, are what a
  run resumes from."""
  records, damaged = [], []
  for number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError:
      record = None
    if (isinstance(record, dict) and isinstance(record.get('epoch'), int)
        and all(isinstance(record.get(k), (int, float)) for k in EPOCH_KEYS)):
      records.append((line, record))
    else:
      damaged.append(number)
  return records, damaged


def damaged_lines_warning(path, damaged: list[int], what_happens: str) -> str:
  shown = ', '.join(map(str, damaged[:5])) + (', ...' if len(damaged) > 5
                                              else '')
  return (f'{path}: {len(damaged)} damaged line(s) (line {shown}: cut off or '
          f'not a JSON record); {what_happens}. The checkpoints hold the run; '
          'these lines are only its per-epoch log.')


def read_metrics(workdir: epath.PathLike) -> list[dict]:
  """The per-epoch records of metrics.jsonl; a resumed run's rewritten
  epochs count once (the last record of each epoch wins). Damaged lines
  are left out with one warning."""
  path = epath.Path(workdir) / METRICS
  if not path.exists():
    return []
  records, damaged = parse_metrics(path.read_text())
  if damaged:
    log.warning(damaged_lines_warning(path, damaged, 'left out here'))
  by_epoch = {}
  for _, record in records:
    by_epoch[record['epoch']] = record
  return [by_epoch[e] for e in sorted(by_epoch)]


def _save(fig, path: epath.Path) -> None:
  """Saves a figure as PNG to any filesystem."""
  buffer = io.BytesIO()
  fig.savefig(buffer, dpi=120, format='png')
  paths.write_atomically(path, buffer.getvalue())


def plot_confusion_matrix(confusion, path: epath.Path) -> None:
  plt = pyplot()
  confusion = np.asarray(confusion)
  fig, ax = plt.subplots(figsize=(6.5, 5.5))
  image = ax.imshow(np.log1p(confusion), cmap='Blues')
  for (i, j), count in np.ndenumerate(confusion):
    if count:
      ax.text(j, i, str(count), ha='center', va='center', fontsize=7,
              color='white' if i == j else 'black')
  ax.set(xticks=range(10), yticks=range(10), xlabel='predicted',
         ylabel='true', title=f'Confusion matrix ({confusion.sum()} images)')
  fig.colorbar(image, ax=ax, label='log(1 + count)')
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def plot_misclassified(images, labels, probabilities, path: epath.Path,
                       limit: int = 100) -> None:
  """The first `limit` misclassified digits in rows of 10, each titled
  true→predicted and the predicted class's probability."""
  plt = pyplot()
  predicted = probabilities.argmax(-1)
  wrong = np.flatnonzero(predicted != labels)[:limit]
  cols = 10
  rows = max(1, -(-len(wrong) // cols))
  # One image of all the digits, each in a cell with room for its title
  # above: one axes rather than one per digit, which made this picture
  # take seconds to draw.
  size = images.shape[1]
  cell_w, cell_h = size + 4, size + 12
  mosaic = np.zeros((rows * cell_h, cols * cell_w), np.float32)
  fig, ax = plt.subplots(figsize=(cols * 1.1, rows * 1.3 + 0.4))
  for n, i in enumerate(wrong):
    top, left = (n // cols) * cell_h + 10, (n % cols) * cell_w + 2
    mosaic[top:top + size, left:left + size] = images[i]
    ax.text(left + size / 2, top - 1.5,
            f'{labels[i]}→{predicted[i]} {probabilities[i].max():.2f}',
            ha='center', va='bottom', fontsize=7, color='crimson')
  ax.imshow(mosaic, cmap='gray_r', vmin=0, vmax=max(1, images.max()),
            interpolation='nearest')
  ax.axis('off')
  ax.set_title(f'{int((predicted != labels).sum())} misclassified '
               '(true→predicted probability)', fontsize=9)
  fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01,
                      top=1 - 0.35 / (rows * 1.3 + 0.4))
  _save(fig, path)
  plt.close(fig)


def plot_training_curves(metrics: list[dict], path: epath.Path) -> None:
  plt = pyplot()
  epochs = [m['epoch'] for m in metrics]
  fig, (loss_ax, acc_ax, lr_ax) = plt.subplots(1, 3, figsize=(13, 3.6))
  for split in ('train', 'val'):
    loss_ax.plot(epochs, [m[f'{split}_loss'] for m in metrics], 'o-',
                 label=split, markersize=3)
    acc_ax.plot(epochs, [m[f'{split}_accuracy'] for m in metrics], 'o-',
                label=split, markersize=3)
  lr_ax.plot(epochs, [m['learning_rate'] for m in metrics], 'o-',
             markersize=3)
  loss_ax.set(title='loss', xlabel='epoch', yscale='log')
  acc_ax.set(title='accuracy', xlabel='epoch')
  lr_ax.set(title='learning rate', xlabel='epoch', yscale='log')
  loss_ax.legend()
  acc_ax.legend()
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)


def write_eval_reports(workdir: epath.PathLike, report: dict, images,
                       labels, probabilities) -> list[str]:
  """Writes the three pictures; returns their paths."""
  workdir = epath.Path(workdir)
  confusion, misclassified, curves = (
      workdir / name for name in (CONFUSION, MISCLASSIFIED, CURVES))
  plot_confusion_matrix(report['confusion_matrix'], confusion)
  plot_misclassified(images, labels, probabilities, misclassified)
  written = [confusion, misclassified]
  metrics = read_metrics(workdir)
  if metrics:
    plot_training_curves(metrics, curves)
    written.append(curves)
  return [str(path) for path in written]
