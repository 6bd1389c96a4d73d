"""The timing the profiling scripts share."""

import statistics
import time

import jax


def median_seconds(f, *args, repeats: int, compiler_options=None) -> float:
  """Median wall time of the jitted `f(*args)` over `repeats` calls, after
  one call to compile (with `compiler_options`, see
  digits_jax/xla_options.py). Pass data as arguments: XLA folds work on
  constants into the program, which flatters the time."""
  f = jax.jit(f, compiler_options=compiler_options)
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)
