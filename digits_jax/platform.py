"""Everything that depends on the platform, decided in one place.

The command line decides it once (main.py) and passes it down: the
trainer, evaluation, predict, export and the benchmark ask the `Platform`
they are given rather than `jax.default_backend()`. What differs (the
measurements behind each choice: docs/performance.md):

  choice                      CPU                          GPU, TPU
  compiler options            Eigen convolutions and       XLA's defaults
                              YNNPACK reductions
                              (xla_options.py)
  conv weight gradients       transposed apart             as JAX derives them
                              (cpu_kernels.conv_with_
                              cpu_weight_gradient)
  steps under lax.scan        unrolled: XLA:CPU runs a     rolled (a while loop)
                              while loop's body many
                              times slower
  steps per dispatch (-1)     8 (unrolled code grows       a whole epoch
                              with it), shared by an
                              ensemble's members
  an ensemble's members       side by side in the step:    jax.vmap
                              vmap makes grouped
                              convolutions, which XLA:CPU
                              runs slower than K plain
                              ones

`conv_impl='xla'` keeps XLA's defaults on the CPU too. Tests build a
`Platform('gpu')` on the CPU to run the accelerator path there
(tests/test_platform.py).
"""

import dataclasses

import jax

from digits_jax import config_checks
from digits_jax import xla_options

CONV_IMPLS = config_checks.CONV_IMPLS
# Steps per dispatch when the config says -1, on the CPU (unrolled).
CPU_STEPS_PER_DISPATCH = 8


@dataclasses.dataclass(frozen=True)
class Platform:
  """The choices for one backend ('cpu', 'gpu', 'tpu') and `conv_impl`."""
  backend: str
  conv_impl: str = 'auto'
  # Whether the members' step is vmapped, in place of this backend's choice
  # (`vmap_members`): the tests and the benchmark try both forms.
  member_vmap: bool | None = None

  def __post_init__(self):
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f'conv_impl={self.conv_impl!r} is not one of '
                       f'{CONV_IMPLS}')

  @property
  def is_cpu(self) -> bool:
    return self.backend == 'cpu'

  @property
  def eigen_convolutions(self) -> bool:
    """Whether XLA:CPU's convolutions go to Eigen ('auto' and 'eigen' on the
    CPU); other backends have their own libraries."""
    return self.is_cpu and self.conv_impl != 'xla'

  @property
  def compiler_options(self) -> dict[str, str] | None:
    """For every jitted program that runs the model; None: XLA's defaults."""
    return (xla_options.cpu_eigen_convolutions() if self.eigen_convolutions
            else None)

  @property
  def cpu_weight_gradients(self) -> bool:
    """Whether the models take `conv_with_cpu_weight_gradient` (measured
    faster with the Eigen convolutions only)."""
    return self.eigen_convolutions

  @property
  def unroll_scan(self) -> bool:
    return self.is_cpu

  @property
  def vmap_members(self) -> bool:
    """Whether an ensemble's step is vmapped over its members (members.py);
    measured: scripts/benchmark.py --num_models=4."""
    if self.member_vmap is not None:
      return self.member_vmap
    return not self.is_cpu

  def steps_per_dispatch(self, configured: int, steps_per_epoch: int,
                         num_models: int = 1) -> int:
    """Train steps per compiled dispatch: `configured` > 0 as is, 0 a whole
    epoch, -1 this platform's default (on the CPU, the unrolled program's
    size: 8 model steps, shared by an ensemble's members)."""
    if configured < 0:
      configured = (max(1, CPU_STEPS_PER_DISPATCH // num_models)
                    if self.is_cpu else 0)
    return min(configured or steps_per_epoch, steps_per_epoch)


def current(conv_impl: str = 'auto') -> Platform:
  """The platform JAX runs on in this process."""
  return Platform(jax.default_backend(), conv_impl)
