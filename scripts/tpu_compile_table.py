"""The README's TPU table: `--mode=compile` for each config on each slice,
in processes of their own, and its JSON lines as a Markdown table.

  python scripts/tpu_compile_table.py > tpu_table.md     # needs libtpu

Each row is the mode's own output (compiler figures; the images/s are its
roofline estimate, not a measurement). The bfloat16 rows: fast.py on each
generation with config.compute_dtype=bfloat16, beside its float32 row.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (config, topology, overrides): each generation at 4 to 8 chips, and a
# 256-chip pod (64 hosts), where fast.py's batch of 128 does not split over
# 256 chips: improved.py with a batch of 256, and the sweep.
ROWS = [(c, t, ()) for c in ('fast', 'improved', 'ensemble', 'sweep')
        for t in ('v4:2x2x1', 'v5e:2x2', 'v5p:2x2x1', 'v6e:2x2')] + [
            ('improved', 'v5e:16x16', ('--config.batch_size=256',)),
            ('sweep', 'v5e:16x16', ('--config.batch_size=256',))]
BFLOAT16_ROWS = [('fast', t, ('--config.compute_dtype=bfloat16',))
                 for t in ('v4:2x2x1', 'v5e:2x2', 'v5p:2x2x1', 'v6e:2x2')]


def compile_row(config: str, topology: str, overrides) -> dict:
  result = subprocess.run(
      [sys.executable, '-m', 'digits_jax.main', f'--config=configs/{config}.py',
       '--mode=compile', f'--topology={topology}', *overrides],
      cwd=ROOT, capture_output=True, text=True, check=False)
  if result.returncode:
    return {'error': result.stderr.strip().splitlines()[-1]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def main():
  argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
  print('| config | topology | chips (devices) | hosts | HBM per device, '
        'dispatch | GFLOP per step per device | estimated images/s (slice; '
        'per chip) | compile s (dispatch) |')
  print('| --- | --- | --- | --- | --- | --- | --- | --- |')
  versions = None
  for config, topology, overrides in ROWS + BFLOAT16_ROWS:
    row = compile_row(config, topology, overrides)
    name = config + (f' ({" ".join(overrides)})' if overrides else '')
    if 'error' in row:
      print(f'| {name} | {topology} | | | | | {row["error"]} | |')
      continue
    versions = f'JAX {row["jax"]}, libtpu {row["libtpu"]}'
    dispatch = row['programs'][0]
    print(f'| {name} | {topology} | {row["chips"]} ({row["devices"]}) | '
          f'{row["hosts"]} | {dispatch["hbm_bytes"] / 2**20:.0f} MiB | '
          f'{row["flops_per_step_per_device"] / 1e9:.2f} | '
          f'{row["estimated_images_per_s"]:,.0f}; '
          f'{row["estimated_images_per_s_per_chip"]:,.0f} | '
          f'{dispatch["compile_s"]:.1f} |', flush=True)
  print(f'\n{versions}')


if __name__ == '__main__':
  main()
