"""Which libraries run the convolutions and reductions: XLA compiler options.

XLA:CPU (jaxlib 0.10) hands dots, convolutions and reductions to YNNPACK by
default. YNNPACK is fast on padded convolutions but slow on this model's
unpadded ones and on the weight gradients JAX derives for them. Left out of
YNNPACK, XLA:CPU runs convolutions with Eigen. Measured on the 2-core
development machine (batch 128, the 5x5 32->32 convolution on its 24x24
input, ms; forward, input gradient, weight gradient;
`python scripts/experiments/conv_profile.py`):

  YNNPACK (XLA's default)   ~155    ~30    ~245
  Eigen                     ~17     ~28    ~37

Reductions are the other way round, so the options keep YNNPACK for them
and only for them. Left to XLA:CPU's own emitters, every sum over batch and
space (BatchNorm's statistics and their gradients, the conv biases'
gradients) is split into a tree of `reduce-window`s for accuracy, and those
ran about 20x slower than YNNPACK's reduction, which is also the more
accurate of the two. The sum and the sum of squares of [128, 24, 24, 32]
per channel (`python scripts/experiments/conv_profile.py` again; ms, and the relative
error against float64):

  YNNPACK (XLA's default)   ~1.2    1e-7
  XLA:CPU's emitters        ~14     3e-6
  these options             ~0.7    1e-7

In the whole train step that measured 1.04-1.10x at 28x28/batch 128 and
1.25x at 32x32/batch 64 (paired windows in one process).

The options are set on each program (`jax.jit(..., compiler_options=...)`),
not process-wide, so that other programs in the process, such as the
benchmark's reference, keep XLA's defaults.

Measured again on jaxlib 0.12 (`scripts/experiments/cpu_choices.py`, each
choice against its alternatives in the whole step): every one still wins
there, so both versions take the same options (docs/performance.md).

jaxlib 0.12's XLA:CPU can also hand convolutions and matmuls to oneDNN
(the library of PyTorch's CPU convolutions) as custom calls, forward and
both gradients; jaxlib 0.10 takes the same options and ignores them. On a
CPU that multiplies bfloat16 in hardware (AVX-512 BF16, AMX) oneDNN runs
a bfloat16 step 1.55x faster than Eigen does and a float32 one 1.03x
(2-core AMD EPYC with AVX-512 BF16, whole step; docs/performance.md), so
platform.py takes it there.
"""

import functools
import logging

import jax
from jax import lax
import jax.numpy as jnp

log = logging.getLogger(__name__)

_FUSION_TYPES = 'xla_cpu_experimental_ynn_fusion_type'
# YNNPACK takes the reductions and nothing else: Eigen convolutions.
EIGEN_CONVOLUTIONS = {_FUSION_TYPES: 'LIBRARY_FUSION_TYPE_REDUCE'}
# An empty list of fusion types, for a jaxlib that names no REDUCE type:
# YNNPACK takes nothing, Eigen the convolutions, XLA's emitters the rest.
EIGEN_ONLY = {_FUSION_TYPES: ''}


@functools.cache
def _accepted(options: tuple) -> bool:
  """Whether this jaxlib knows the options (they are experimental and may be
  renamed): a trivial program compiled with them."""
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=dict(options))
  except Exception as e:  # pylint: disable=broad-exception-caught
    log.warning('This jaxlib does not take the XLA:CPU options %s (%s).',
                dict(options), e)
    return False
  return True


# oneDNN (the library PyTorch's CPU convolutions use) runs the convolutions
# and matmuls as XLA:CPU custom calls; YNNPACK keeps the reductions.
ONEDNN_CONVOLUTIONS = {'xla_cpu_use_onednn': True,
                       'xla_cpu_experimental_onednn_custom_call': True,
                       **EIGEN_CONVOLUTIONS}


@functools.cache
def _rewrites_to_onednn(options: tuple) -> bool:
  """Whether this jaxlib hands a convolution to oneDNN under `options`:
  jaxlib 0.10 takes the options and ignores them (no oneDNN in its
  XLA:CPU), 0.12 does it."""
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # Not a 1x1 output of one channel: XLA makes that a dot.
  shapes = (jax.ShapeDtypeStruct((1, 5, 5, 8), jnp.float32),
            jax.ShapeDtypeStruct((3, 3, 8, 8), jnp.float32))
  try:
    compiled = jax.jit(conv).lower(*shapes).compile(
        compiler_options=dict(options))
  except Exception as e:  # pylint: disable=broad-exception-caught
    log.warning('This jaxlib does not take the XLA:CPU options %s (%s).',
                dict(options), e)
    return False
  return '__onednn$' in compiled.as_text()


def cpu_onednn_convolutions() -> dict | None:
  """XLA:CPU compiler options under which oneDNN runs the convolutions and
  matmuls, YNNPACK the reductions; None if this jaxlib has no oneDNN."""
  if _rewrites_to_onednn(tuple(ONEDNN_CONVOLUTIONS.items())):
    return dict(ONEDNN_CONVOLUTIONS)
  return None


def cpu_eigen_convolutions() -> dict[str, str] | None:
  """XLA:CPU compiler options under which Eigen runs the convolutions and
  YNNPACK the reductions; None (XLA's defaults) if this jaxlib takes
  neither form. `platform.py` decides where they apply."""
  for options in (EIGEN_CONVOLUTIONS, EIGEN_ONLY):
    if _accepted(tuple(options.items())):
      return dict(options)
  log.warning("Compiling with XLA's default options.")
  return None
