"""The suite fails when the project's own code calls what a library
deprecated (pyproject.toml's filterwarnings, helpers.cli_env for the
processes the tests start), and only then: a library's warnings about its
own internals pass."""

import subprocess
import sys
import warnings

import pytest

import helpers


def _warn_from(module: str, category=DeprecationWarning):
  """A warning as Python attributes it to the caller in `module` (what a
  library's `warnings.warn(..., stacklevel=2)` does)."""
  warnings.warn_explicit('this API is deprecated', category, 'caller.py', 1,
                         module=module)


@pytest.mark.parametrize('module', ['digits_jax.train', 'digits_jax',
                                    'test_train', 'helpers', '__main__'])
@pytest.mark.parametrize('category', [DeprecationWarning, FutureWarning])
def test_a_deprecated_call_from_our_code_fails_the_test(module, category):
  with pytest.raises(category):
    _warn_from(module, category)


@pytest.mark.parametrize('module', ['jax._src.api', 'flax.linen.module',
                                    'orbax.checkpoint._src.handlers'])
def test_a_library_warning_about_its_own_internals_passes(module):
  with pytest.warns(DeprecationWarning):
    _warn_from(module)


@pytest.mark.slow
@pytest.mark.across_jax
def test_a_deprecated_call_from_our_code_fails_a_started_process():
  script = ('import warnings; warnings.warn_explicit("old", {}, "f.py", 1, '
            'module="{}")')
  def run(category, module):
    return subprocess.run(
        [sys.executable, '-c', script.format(category, module)],
        env=helpers.cli_env(), capture_output=True, text=True, check=False)
  for module in ('digits_jax.checkpoint', '__main__'):
    for category in ('DeprecationWarning', 'FutureWarning'):
      failed = run(category, module)
      assert failed.returncode == 1, (module, category, failed.stderr)
      assert category in failed.stderr
  library = run('DeprecationWarning', 'jax._src.api')
  assert library.returncode == 0, library.stderr
