"""metrics.jsonl as a user's copy may leave it: a line cut off (a copy or a
sync interrupted) or edited by hand is set aside with one warning; the
checkpoints, not this log, are what a run resumes from."""

import json
import logging

from digits_jax import reports
from digits_jax import train

GOOD = [{'step': 10 * e, 'epoch': e, 'train_loss': 1.0 / e,
         'train_accuracy': 0.5 + e / 10, 'val_loss': 1.1 / e,
         'val_accuracy': 0.4 + e / 10, 'learning_rate': 1e-3}
        for e in (1, 2, 3)]


def _damaged_file(workdir):
  lines = [json.dumps(r) for r in GOOD]
  text = '\n'.join([lines[0], lines[1][:25], 'edited by hand',
                    '{"epoch": 2, "train_loss": 0.5}', lines[2]]) + '\n'
  (workdir / reports.METRICS).write_text(text)
  return text


def test_damaged_lines_are_left_out_with_one_warning(tmp_path, caplog):
  _damaged_file(tmp_path)
  with caplog.at_level(logging.WARNING):
    records = reports.read_metrics(tmp_path)
  assert records == [GOOD[0], GOOD[2]]
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1
  assert '3 damaged line(s) (line 2, 3, 4' in warnings[0].getMessage()


def test_training_moves_damaged_lines_aside_and_keeps_the_rest(tmp_path,
                                                               caplog):
  text = _damaged_file(tmp_path)
  writer = train.MetricsWriter(tmp_path)
  writer.write(40, {**GOOD[0], 'epoch': 4})
  writer.close()
  lines = (tmp_path / reports.METRICS).read_text().splitlines()
  assert [json.loads(l)['epoch'] for l in lines] == [1, 3, 4]
  aside = (tmp_path / reports.DAMAGED_METRICS).read_text().splitlines()
  assert aside == text.splitlines()[1:4]
  assert 'moved to metrics.jsonl.damaged' in caplog.text
  # Nothing damaged now: a later run says nothing.
  caplog.clear()
  train.MetricsWriter(tmp_path).close()
  assert 'damaged' not in caplog.text
  assert (tmp_path / reports.DAMAGED_METRICS).read_text().splitlines() == aside


def test_the_training_curves_are_drawn_from_the_good_lines(tmp_path):
  _damaged_file(tmp_path)
  reports.plot_training_curves(reports.read_metrics(tmp_path),
                               tmp_path / reports.CURVES)
  assert (tmp_path / reports.CURVES).stat().st_size > 1000
