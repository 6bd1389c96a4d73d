"""Everything that depends on the platform, decided in one place.

The command line decides it once (main.py) and passes it down: the
trainer, evaluation, predict, export and the benchmark ask the `Platform`
they are given rather than `jax.default_backend()`. What differs (the
measurements behind each choice: docs/performance.md):

  choice                      CPU                          GPU, TPU
  compiler options            oneDNN convolutions where    XLA's defaults
                              the CPU computes bfloat16
                              (AVX-512 BF16, AMX) and
                              jaxlib has oneDNN, else
                              Eigen's; YNNPACK reductions
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

`conv_impl='xla'` keeps XLA's defaults on the CPU too; 'eigen' and
'onednn' name the library whatever the CPU. The CPU's instruction sets
come from the kernel (/proc/cpuinfo) when `current` builds the platform;
a `Platform` built without them (tests) takes Eigen. Tests build a
`Platform('gpu')` on the CPU to run the accelerator path there
(tests/test_platform.py).
"""

import dataclasses
import functools
import logging

import jax

from digits_jax import config_checks
from digits_jax import xla_options

CONV_IMPLS = config_checks.CONV_IMPLS
# Instruction sets that compute bfloat16 products in hardware: where oneDNN
# runs the convolutions (docs/performance.md: on an AMD EPYC with AVX-512
# BF16, a bfloat16 step 1.55x Eigen's and 1.4x a float32 one; float32 no
# slower).
BFLOAT16_UNITS = frozenset({'avx512_bf16', 'amx_bf16'})

log = logging.getLogger(__name__)
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
  # The CPU's instruction sets (`cpu_features()`); empty: none known.
  cpu_features: frozenset[str] = frozenset()

  def __post_init__(self):
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f'conv_impl={self.conv_impl!r} is not one of '
                       f'{CONV_IMPLS}')

  @property
  def is_cpu(self) -> bool:
    return self.backend == 'cpu'

  @property
  def conv_library(self) -> str | None:
    """Which library runs XLA:CPU's convolutions: 'onednn', 'eigen', or
    None (XLA's defaults; other backends have their own libraries)."""
    if not self.is_cpu or self.conv_impl == 'xla':
      return None
    wants_onednn = self.conv_impl == 'onednn' or (
        self.conv_impl == 'auto' and self.cpu_features & BFLOAT16_UNITS)
    if wants_onednn and xla_options.cpu_onednn_convolutions() is not None:
      return 'onednn'
    if self.conv_impl == 'onednn':
      _no_onednn_warning()
    return 'eigen'

  @property
  def compiler_options(self) -> dict | None:
    """For every jitted program that runs the model; None: XLA's defaults."""
    library = self.conv_library
    if library == 'onednn':
      return xla_options.cpu_onednn_convolutions()
    return xla_options.cpu_eigen_convolutions() if library else None

  @property
  def cpu_weight_gradients(self) -> bool:
    """Whether the models take `conv_with_cpu_weight_gradient` (measured
    faster with the Eigen and the oneDNN convolutions, not YNNPACK's)."""
    return self.conv_library is not None

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


@functools.cache
def _no_onednn_warning() -> None:
  log.warning("conv_impl='onednn': this jaxlib's XLA:CPU has no oneDNN "
              '(JAX 0.12 has it); Eigen runs the convolutions.')


def cpu_features() -> frozenset[str]:
  """The CPU's instruction sets as the kernel lists them (Linux's
  /proc/cpuinfo flags); empty where it does not."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.partition(':')[2].split())
  except OSError:
    pass
  return frozenset()


def current(conv_impl: str = 'auto') -> Platform:
  """The platform JAX runs on in this process, and its CPU's instruction
  sets."""
  return Platform(jax.default_backend(), conv_impl, cpu_features=cpu_features())
