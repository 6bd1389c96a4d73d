"""Which library runs the convolutions: XLA compiler options per program.

XLA:CPU (jaxlib 0.10) hands dots and convolutions to YNNPACK by default.
YNNPACK is fast on padded convolutions but slow on this model's unpadded
ones and on the weight gradients JAX derives for them. Compiled without
YNNPACK, XLA:CPU runs them with Eigen. Measured on the 2-core development
machine (batch 128, the 5x5 32->32 convolution on its 24x24 input, ms;
forward, input gradient, weight gradient; `python scripts/conv_profile.py`):

  YNNPACK (XLA's default)   ~155    ~30    ~245
  Eigen                     ~17     ~28    ~37

and the whole train step 1.08-1.19x faster than this project's own matmul
formulations of the convolutions, which it replaces (paired A/B windows in
one process, 28x28/batch 128 and 32x32/batch 64). Eigen is slower only on
conv1's forward pass (one input channel: 5.5 ms against 3.0), a small part of
the step.

The options are set on each program (`jax.jit(..., compiler_options=...)`),
not process-wide, so that other programs in the process, such as the
benchmark's reference, keep XLA's defaults.
"""

import functools

from absl import logging
import jax

CONV_IMPLS = ('auto', 'xla', 'eigen')

# An empty list of library fusion types: YNNPACK takes no operation.
_EIGEN = {'xla_cpu_experimental_ynn_fusion_type': ''}


@functools.cache
def _accepted(options: tuple) -> bool:
  """Whether this jaxlib knows the options (they are experimental and may be
  renamed): a trivial program compiled with them."""
  try:
    jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=dict(options))
  except Exception as e:  # pylint: disable=broad-exception-caught
    logging.warning('This jaxlib does not take the XLA:CPU options %s (%s); '
                    "compiling with XLA's defaults.", dict(options), e)
    return False
  return True


def compiler_options(conv_impl: str) -> dict[str, str] | None:
  """Compiler options for a program whose convolutions run per `conv_impl`:

  'xla': XLA's defaults on every backend; 'eigen': on the CPU, Eigen rather
  than YNNPACK (other backends have their own libraries and keep their
  defaults); 'auto': the faster measured, which is 'eigen'.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl={conv_impl!r} is not one of {CONV_IMPLS}')
  if conv_impl == 'xla' or jax.default_backend() != 'cpu':
    return None
  return dict(_EIGEN) if _accepted(tuple(_EIGEN.items())) else None
