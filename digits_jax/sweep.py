"""Sweeps: hyperparameter values as the member axis of one program.

`config.sweep` names values for some hyperparameters,

  'learning_rate=2e-3,4e-3,8e-3 dropout_rate=0.1,0.25 seed=0,1'

and `config.sweep_mode` how they combine: 'grid' (every combination, the
first key varying slowest) or 'zip' (the lists taken together, all of one
length). Each combination is a member of the run, a whole model on the
member axis the ensembles have (members.py, which turns the spec into the
run's members once): trained in the same compiled step, validated on its
own, its plateau following its own validation loss, and exactly the single
run with its values (`members.member_config`; the seed gives a member its
keys as it gives a single run its own).

The swept numbers reach the device in the train state (`TrainState.hparams`,
float32 by name) and the step reads them as traced values, so one
compilation serves the whole sweep, and any other values for the same keys.
Which keys can be swept: those the step can take as numbers without
changing its program's shapes (`SWEEPABLE`).

This module holds the spec's parser and, at the bottom, the end-of-run
table, sweep.json and sweep.png; it imports nothing heavy.
"""

import io
import itertools
import json
import logging
import textwrap

from digits_jax.errors import UserError

SWEEPABLE = ('learning_rate', 'l2', 'dropout_rate', 'rotation_degrees',
             'zoom_range', 'shift_range', 'ema_decay', 'label_smoothing',
             'seed')
# The seed chooses the member's keys on the host; the rest are traced.
TRACED = tuple(k for k in SWEEPABLE if k != 'seed')
MODES = ('grid', 'zip')

SWEEP_JSON = 'sweep.json'
SWEEP_PNG = 'sweep.png'

log = logging.getLogger(__name__)


def _number(key: str, text: str):
  try:
    return int(text) if key == 'seed' else float(text)
  except ValueError:
    wanted = 'a non-negative integer' if key == 'seed' else 'a number'
    raise UserError(f'config.sweep: {key} value {text!r} is not {wanted}'
                    ) from None


def parse(spec: str) -> dict[str, tuple]:
  """'key=v1,v2 key2=v3' -> {'key': (v1, v2), 'key2': (v3,)}, in order."""
  values = {}
  for term in spec.replace(';', ' ').split():
    key, equals, listed = term.partition('=')
    if not equals or not key:
      raise UserError(f'config.sweep: {term!r} is not KEY=V1,V2,... (for '
                      'example learning_rate=1e-3,2e-3)')
    if key not in SWEEPABLE:
      raise UserError(f'config.sweep: {key} cannot be swept; a sweep takes '
                      f'{", ".join(SWEEPABLE)} (the rest change the '
                      'compiled program: one run each)')
    if key in values:
      raise UserError(f'config.sweep names {key} twice; give its values in '
                      'one list')
    items = [v for v in listed.split(',') if v]
    if not items:
      raise UserError(f'config.sweep: {key}= names no values; give at least '
                      f'one, e.g. {key}=V1,V2')
    values[key] = tuple(_number(key, v) for v in items)
  return values


def swept_values(config) -> dict[str, tuple]:
  """The spec's values by key ({} without a sweep)."""
  if not config.get('sweep', ''):
    return {}
  if config.sweep_mode not in MODES:
    raise UserError(f'config.sweep_mode={config.sweep_mode!r} must be one of '
                    f'{MODES} (grid: every combination; zip: the lists '
                    'taken together)')
  values = parse(config.sweep)
  if not values:
    raise UserError(f'config.sweep={config.sweep!r} names no values; give '
                    'KEY=V1,V2,... or leave it empty')
  lengths = {len(v) for v in values.values()}
  if config.sweep_mode == 'zip' and len(lengths) > 1:
    raise UserError('config.sweep with sweep_mode=zip takes the lists '
                    'together, so they must be of one length; these are '
                    + ', '.join(f'{k}: {len(v)}' for k, v in values.items()))
  return values


def member_values(config) -> list[dict]:
  """Each member's values, {key: value} for the swept keys, in member
  order ([] without a sweep)."""
  values = swept_values(config)
  if not values:
    return []
  keys = list(values)
  if config.sweep_mode == 'zip':
    combinations = zip(*values.values())
  else:
    combinations = itertools.product(*values.values())
  return [dict(zip(keys, c)) for c in combinations]


def describe(values: dict) -> str:
  return ' '.join(f'{k}={v:g}' for k, v in values.items())


# The results: from the run's own per-epoch records (reports.read_metrics).


def results(values: list[dict], records: list[dict], rank) -> list[dict]:
  """Each member's values (`values`, in member order) and its best epoch by
  validation accuracy (the lower loss among equals), best member first by
  `rank` (members.rank_by_validation)."""
  members = []
  for j, values in enumerate(values):
    epochs = [(r['member_val_accuracy'][j], -r['member_val_loss'][j],
               r['epoch']) for r in records if 'member_val_accuracy' in r]
    if not epochs:
      continue
    accuracy, negative_loss, epoch = max(epochs)
    members.append({'member': j, 'values': values,
                    'val_accuracy': accuracy, 'val_loss': -negative_loss,
                    'epoch': epoch})
  order = rank([m['val_accuracy'] for m in members],
              [m['val_loss'] for m in members])
  return [members[i] for i in order]


def table(members: list[dict]) -> str:
  """The results as a fixed-width table, best first."""
  if not members:
    return '(no epoch completed)'
  keys = list(members[0]['values'])
  header = ['member', *keys, 'val acc', 'val loss', 'epoch']
  rows = [[str(m['member']), *(f'{m["values"][k]:g}' for k in keys),
           f'{m["val_accuracy"]:.4f}', f'{m["val_loss"]:.4f}',
           str(m['epoch'])] for m in members]
  widths = [max(len(r[i]) for r in [header, *rows])
            for i in range(len(header))]
  line = lambda r: '  '.join(c.rjust(w) for c, w in zip(r, widths))
  return '\n'.join([line(header), *map(line, rows)])


def write_results(config, values: list[dict], workdir, rank) -> list[dict]:
  """Logs the table and writes sweep.json and sweep.png into `workdir`
  (process 0 only writes). `values`: each member's; `rank`, as `results`'."""
  import jax  # pylint: disable=g-import-not-at-top
  from digits_jax import paths  # pylint: disable=g-import-not-at-top
  from digits_jax import reports  # pylint: disable=g-import-not-at-top
  members = results(values, reports.read_metrics(workdir), rank)
  log.info('Sweep of %d members (%s), by validation accuracy:\n%s',
           len(values), config.sweep_mode, table(members))
  if jax.process_index() == 0:
    paths.write_atomically(workdir / SWEEP_JSON, json.dumps(
        {'sweep': config.sweep, 'sweep_mode': config.sweep_mode,
         'members': members}, indent=1))
    if members:
      paths.write_atomically(workdir / SWEEP_PNG,
                             plot(members, config.sweep_mode))
  return members


def plot(members: list[dict], mode: str = 'grid') -> bytes:
  """sweep.png: each member's best validation accuracy. A grid: against
  each swept value, one panel per key. Lists taken together ('zip'): one
  bar per member, named by how its values differ from the commonest ones
  (a sweep of variations around one recipe reads as what each change
  does). The best member in red."""
  from digits_jax import reports  # pylint: disable=g-import-not-at-top
  plt = reports.pyplot()
  best = members[0]['member']
  color = lambda m: 'tab:red' if m['member'] == best else 'tab:blue'
  keys = list(members[0]['values'])
  if mode == 'zip':
    figure, axis = plt.subplots(figsize=(7, 0.9 + 0.32 * len(members)))
    usual = {k: max({m['values'][k] for m in members},
                    key=[m['values'][k] for m in members].count)
             for k in keys}
    ordered = sorted(members, key=lambda m: m['member'])
    labels = [f'{m["member"]}: ' + (describe(
        {k: v for k, v in m['values'].items() if v != usual[k]}) or 'base')
              for m in ordered]
    accuracy = [100 * m['val_accuracy'] for m in ordered]
    axis.barh(range(len(ordered)), accuracy,
              color=[color(m) for m in ordered])
    axis.set_yticks(range(len(ordered)), labels, fontsize=8)
    axis.invert_yaxis()
    low, high = min(accuracy), max(accuracy)
    axis.set_xlim(low - max(0.5 * (high - low), 0.05),
                  high + max(0.25 * (high - low), 0.02))
    axis.set_xlabel('best validation accuracy (%)')
    axis.grid(alpha=0.3, axis='x')
    figure.suptitle('\n'.join(textwrap.wrap(
        f'{len(members)} members; base: {describe(usual)}', 80)), fontsize=8)
  else:
    columns = min(len(keys), 4)
    rows = -(-len(keys) // columns)
    figure, axes = plt.subplots(rows, columns,
                                figsize=(3.2 * columns, 2.8 * rows),
                                squeeze=False, sharey=True)
    for axis in axes.flat[len(keys):]:
      axis.set_visible(False)
    for axis, key in zip(axes.flat, keys):
      xs = [m['values'][key] for m in members]
      axis.scatter(xs, [100 * m['val_accuracy'] for m in members],
                   c=[color(m) for m in members], s=22)
      axis.set_xlabel(key)
      if key in ('learning_rate', 'l2') and min(xs) > 0:
        axis.set_xscale('log')
        # The swept values as ticks, not powers of ten over each other.
        axis.set_xticks(sorted(set(xs)), [f'{x:g}' for x in sorted(set(xs))])
        axis.minorticks_off()
      axis.grid(alpha=0.3)
    for row in axes:
      row[0].set_ylabel('best val. accuracy (%)')
    figure.suptitle(f'{len(members)} members; best: member {best} '
                    f'({describe(members[0]["values"])})', fontsize=8)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', dpi=110)
  plt.close(figure)
  return buffer.getvalue()
