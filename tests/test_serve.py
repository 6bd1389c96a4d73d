"""--mode=serve: the JSON API against every bad input, a bounded load, the
command line, and the page in a real headless Chromium.

One server (in this process, over the session's trained tiny run) serves
every test here but the command line's; the browser tests drive Debian's
`chromium` through `chromium-driver` (.ci/run installs both).
"""

import concurrent.futures
import http.client
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import pytest

from helpers import ROOT, assert_one_line_error, cli_env, run_main

from digits_jax import input_pipeline
from digits_jax import members as members_lib
from digits_jax import platform as platform_lib
from digits_jax import predict
from digits_jax import serve

pytestmark = [pytest.mark.slow, pytest.mark.across_jax]  # Serves a trained model; starts a browser.

# A short client timeout, so that the slow-client tests take a second.
CLIENT_TIMEOUT_S = 1.0


def png_bytes(digit: np.ndarray, scale: int = 4) -> bytes:
  """An MNIST digit as people's files hold one: dark ink on white, larger."""
  image = Image.fromarray(255 - digit).resize(
      (28 * scale, 28 * scale), Image.BILINEAR)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


class Client:
  """Requests to the test server, one connection each (as the page's)."""

  def __init__(self, port: int):
    self.port = port

  def request(self, method: str, path: str, body: bytes | None = None,
              headers: dict | None = None):
    connection = http.client.HTTPConnection('127.0.0.1', self.port,
                                            timeout=30)
    try:
      connection.request(method, path, body=body, headers=headers or {})
      response = connection.getresponse()
      payload = response.read()
      return response.status, response.getheader('Content-Type'), payload
    finally:
      connection.close()

  def predict(self, body: bytes, content_type: str = 'image/png'):
    status, _, payload = self.request('POST', '/predict', body,
                                      {'Content-Type': content_type})
    return status, json.loads(payload)

  def raw(self, data: bytes, wait_s: float = 10.0) -> bytes:
    """`data` sent as is on a socket; what comes back until it closes."""
    with socket.create_connection(('127.0.0.1', self.port),
                                  timeout=wait_s) as s:
      s.sendall(data)
      chunks = []
      while chunk := s.recv(65536):
        chunks.append(chunk)
      return b''.join(chunks)


@pytest.fixture(scope='module')
def server(predict_model):
  """(client, predictor, test digits, their labels) of a running server over
  the session's predict model (conftest.py: ~97%)."""
  config, workdir = predict_model
  httpd = serve.make_server('127.0.0.1', 0, client_timeout_s=CLIENT_TIMEOUT_S)
  httpd.predictor = serve.Predictor(*members_lib.resolve(config), workdir,
                                    platform_lib.current())
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  splits = input_pipeline.load_splits(config)
  yield (Client(httpd.server_address[1]), httpd.predictor,
         splits.test_images, splits.test_labels)
  httpd.shutdown()
  httpd.server_close()


def assert_still_serving(client: Client, digits) -> None:
  status, answer = client.predict(png_bytes(digits[0]))
  assert status == 200, answer
  assert 0 <= answer['digit'] <= 9


def test_the_page_and_its_files_are_served_and_nothing_else(server):
  client, _, digits, _ = server
  status, content_type, page = client.request('GET', '/')
  assert status == 200 and content_type.startswith('text/html')
  assert b'<canvas id="pad"' in page
  # Everything the page loads is this server's: no CDN, no other host.
  for name, kind in (('/app.js', 'text/javascript'),
                     ('/style.css', 'text/css')):
    status, content_type, body = client.request('GET', name)
    assert status == 200 and content_type.startswith(kind), name
    assert b'http://' not in body and b'https://' not in body, name
  assert b'https://' not in page and b'http://' not in page.replace(
      b'http://HOST:PORT/predict', b'')
  for path in ('/../digits_jax/serve.py', '/serve.py', '/%2e%2e/pyproject.toml',
               '//etc/passwd', '/serve_page/app.js', '/index.html/..'):
    status, content_type, body = client.request('GET', path)
    assert status == 404, path
    assert content_type == 'application/json'
    assert 'open /' in json.loads(body)['error']
  assert_still_serving(client, digits)


def test_a_digit_is_predicted_as_predict_mode_predicts_it(server,
                                                          predict_model,
                                                          tmp_path):
  client, _, digits, _ = server
  config, workdir = predict_model
  body = png_bytes(digits[3])
  status, answer = client.predict(body)
  assert status == 200, answer
  (tmp_path / 'digit.png').write_bytes(body)
  output = tmp_path / 'predictions.json'
  assert predict.predict_files(
      *members_lib.resolve(config), workdir, [str(tmp_path / 'digit.png')],
      str(output), platform_lib.current()) == 0
  expected = json.loads(output.read_text())['predictions'][0]
  assert answer['digit'] == expected['digit']
  np.testing.assert_allclose(answer['probabilities'],
                             expected['probabilities'], atol=1e-5)
  assert abs(sum(answer['probabilities']) - 1) < 1e-4
  # The 28x28 image the model saw: predict's own to_mnist of that file.
  seen = np.asarray(answer['input'])
  assert seen.shape == (28, 28)
  np.testing.assert_array_equal(
      seen, predict.read_image(io.BytesIO(body)))
  assert 'num_models' not in answer  # A single model.


def _bomb() -> bytes:
  """A PNG of 36 million white pixels in about 35 kB."""
  buffer = io.BytesIO()
  Image.new('L', (6000, 6000), 255).save(buffer, format='PNG')
  return buffer.getvalue()


def _two_digits(digits) -> bytes:
  side_by_side = np.concatenate([digits[0], np.zeros((28, 20), np.uint8),
                                 digits[1]], axis=1)
  return png_bytes(side_by_side)


@pytest.mark.parametrize('case, status, fragment', [
    ('not an image', 422, 'not an image'),
    ('empty', 400, 'the body is empty'),
    ('json', 415, "Content-Type 'application/json' is not an image"),
    ('form', 415, 'not a form or JSON'),
    ('blank', 422, 'no digit found'),
    ('two digits', 422, 'found 2 separate marks'),
    ('bomb', 422, 'too large'),
    ('truncated png', 422, 'cannot decode it'),
])
def test_a_bad_body_gets_a_status_and_one_line(server, case, status,
                                               fragment):
  client, _, digits, _ = server
  good = png_bytes(digits[0])
  body, content_type = {
      'not an image': (b'hello, this is text', 'image/png'),
      'empty': (b'', 'image/png'),
      'json': (b'{"image": "..."}', 'application/json'),
      'form': (good, 'multipart/form-data; boundary=x'),
      'blank': (png_bytes(np.zeros((28, 28), np.uint8)), 'image/png'),
      'two digits': (_two_digits(digits), 'image/png'),
      'bomb': (_bomb(), 'image/png'),
      'truncated png': (good[:len(good) // 2], 'image/png'),
  }[case]
  got, answer = client.predict(body, content_type)
  assert got == status, answer
  assert set(answer) == {'error'}
  assert fragment in answer['error'] and '\n' not in answer['error']
  assert 'Traceback' not in answer['error']
  assert_still_serving(client, digits)


def test_too_large_is_refused_from_its_length_before_it_is_sent(server):
  client, _, digits, _ = server
  start = time.perf_counter()
  # Headers only: the server must answer without waiting for 11 MB.
  reply = client.raw(b'POST /predict HTTP/1.1\r\nHost: x\r\n'
                     b'Content-Type: image/png\r\n'
                     b'Content-Length: 11000000\r\n\r\n')
  assert time.perf_counter() - start < CLIENT_TIMEOUT_S
  assert reply.startswith(b'HTTP/1.0 413'), reply[:200]
  assert b'more than the 10,485,760 accepted' in reply
  assert_still_serving(client, digits)


@pytest.mark.parametrize('request_bytes, status', [
    (b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n\r\n',
     b'411'),
    (b'POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n'
     b'Content-Type: image/png\r\n\r\n5\r\nhello\r\n0\r\n\r\n', b'411'),
    (b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n',
     b'400'),
    (b'POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n', b'404'),
    (b'GARBAGE\r\n\r\n', b'400'),
])
def test_malformed_requests_get_a_status(server, request_bytes, status):
  client, _, digits, _ = server
  reply = client.raw(request_bytes)
  assert reply.split(b' ')[1] == status, reply[:300]
  assert b'Traceback' not in reply
  assert_still_serving(client, digits)


def _read_until_closed(connection: socket.socket) -> bytes:
  """All the server sends before it closes (a loaded machine may hand the
  reply's head and body to two reads)."""
  chunks = []
  while chunk := connection.recv(65536):
    chunks.append(chunk)
  return b''.join(chunks)


def test_a_slow_client_is_dropped_and_others_are_served_meanwhile(server):
  client, _, digits, _ = server
  with socket.create_connection(('127.0.0.1', client.port)) as slow:
    # Promises 2,000 bytes, sends 10, then stalls.
    slow.sendall(b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: '
                 b'image/png\r\nContent-Length: 2000\r\n\r\n0123456789')
    with socket.create_connection(('127.0.0.1', client.port)) as silent:
      assert_still_serving(client, digits)  # While both hang.
      slow.settimeout(10 * CLIENT_TIMEOUT_S)
      reply = _read_until_closed(slow)
      assert reply.startswith(b'HTTP/1.0 408'), reply[:200]
      assert b'too slowly' in reply
      silent.settimeout(10 * CLIENT_TIMEOUT_S)
      assert silent.recv(65536) == b''  # Closed for saying nothing.
  assert_still_serving(client, digits)


def test_an_internal_error_is_one_line_and_the_next_request_is_served(
    server, monkeypatch, caplog):
  client, predictor, digits, _ = server
  with monkeypatch.context() as patch:
    patch.setattr(predictor, '_evaluator', None)  # The call fails inside.
    status, answer = client.predict(png_bytes(digits[0]))
  assert status == 500
  assert answer == {'error': 'internal error (the server log says more)'}
  assert any('POST /predict failed' in r.getMessage() for r in caplog.records)
  assert_still_serving(client, digits)


def _load(port: int, bodies: list[bytes], clients: int, requests: int):
  """`clients` threads, each sending `requests` POSTs in turn over the
  bodies: (the answers' digits per request, latencies in seconds)."""
  def one_client(c):
    client = Client(port)
    answers = []
    for r in range(requests):
      i = (c * requests + r) % len(bodies)
      start = time.perf_counter()
      status, answer = client.predict(bodies[i])
      answers.append((i, status, answer.get('digit'),
                      time.perf_counter() - start))
    return answers
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    return [a for answers in pool.map(one_client, range(clients))
            for a in answers]


def test_eight_clients_at_once_are_all_answered_right(server, record_property):
  client, predictor, digits, _ = server
  bodies = [png_bytes(d) for d in digits[:16]]
  expected = [predictor(predict.read_image(io.BytesIO(b)))['digit']
              for b in bodies]
  start = time.perf_counter()
  answers = _load(client.port, bodies, clients=8, requests=50)
  wall = time.perf_counter() - start
  assert len(answers) == 400  # None lost.
  assert all(status == 200 for _, status, _, _ in answers)
  assert all(digit == expected[i] for i, _, digit, _ in answers)
  latencies = sorted(1e3 * t for *_, t in answers)
  figures = {'requests': 400, 'clients': 8, 'wall_s': round(wall, 2),
             'requests_per_s': round(400 / wall, 1),
             'median_ms': round(statistics.median(latencies), 1),
             'p95_ms': round(latencies[int(0.95 * 400)], 1),
             'max_ms': round(latencies[-1], 1)}
  record_property('serve_load', json.dumps(figures))
  print('serve load:', json.dumps(figures))


def test_an_ensemble_says_how_many_members_agree(ensemble_run,
                                                mnist_data_dir):
  workdir, _, _ = ensemble_run
  from digits_jax import config_checks  # pylint: disable=g-import-not-at-top
  config = config_checks.load_config('tiny')
  config.num_models = 3
  config.data_dir = mnist_data_dir
  predictor = serve.Predictor(*members_lib.resolve(config), workdir,
                              platform_lib.current())
  splits = input_pipeline.load_splits(config)
  answer = predictor(splits.test_images[0])
  assert answer['num_models'] == 3
  assert 1 <= answer['members_agreeing'] <= 3
  assert len(answer['probabilities']) == 10


def test_serve_from_the_command_line_then_sigterm(trained_run):
  config, workdir, _ = trained_run
  process = subprocess.Popen(
      [sys.executable, '-m', 'digits_jax.main', '--config=configs/tiny.py',
       f'--config.data_dir={config.data_dir}', f'--workdir={workdir}',
       '--mode=serve', '--port=0'],
      cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True)
  try:
    lines = []
    for line in process.stderr:
      lines.append(line)
      if 'Serving' in line:
        break
    assert 'Serving the model' in lines[-1], ''.join(lines)
    port = int(lines[-1].split('http://127.0.0.1:')[1].split('/')[0])
    status, _, body = Client(port).request('GET', '/health')
    assert status == 200 and json.loads(body)['status'] == 'ok'
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255  # A one.
    status, answer = Client(port).predict(png_bytes(digit))
    assert status == 200, answer
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=30) == 0, rest
    assert 'SIGTERM received: stopped serving' in rest
    assert 'Traceback' not in ''.join(lines) + rest
  finally:
    process.kill()
    process.wait()


def _start_serving(workdir, config):
  """`--mode=serve` in a process of its own; (process, port)."""
  process = subprocess.Popen(
      [sys.executable, '-m', 'digits_jax.main', '--config=configs/tiny.py',
       f'--config.data_dir={config.data_dir}', f'--workdir={workdir}',
       '--mode=serve', '--port=0'],
      cwd=ROOT, env=cli_env(), stderr=subprocess.PIPE, text=True)
  for line in process.stderr:
    if 'Serving' in line:
      return process, int(line.split('http://127.0.0.1:')[1].split('/')[0])
  raise AssertionError(f'serve never started: {process.stderr.read()}')


def _post_bytes(body: bytes) -> bytes:
  return (b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n'
          b'Content-Length: ' + str(len(body)).encode() + b'\r\n\r\n' + body)


def _status_of(response: bytes) -> int:
  return int(response.split(b' ', 2)[1]) if response else 0


def test_a_stopped_server_answers_what_it_accepted_and_refuses_the_rest(
    trained_run):
  """SIGTERM while requests are on their way: those whose connection was
  made (mid-body, or waiting in the listen queue) are answered 200; /health
  and new requests meanwhile get 503 saying it is stopping; exit 0."""
  config, workdir, _ = trained_run
  digit = np.zeros((28, 28), np.uint8)
  digit[4:24, 12:16] = 255  # A one.
  request = _post_bytes(png_bytes(digit))
  process, port = _start_serving(workdir, config)
  try:
    # Mid-body at the signal: all but the last byte sent.
    slow = [socket.create_connection(('127.0.0.1', port), timeout=60)
            for _ in range(3)]
    for connection in slow:
      connection.sendall(request[:-1])
    # A burst sent whole just before it.
    burst = [socket.create_connection(('127.0.0.1', port), timeout=60)
             for _ in range(60)]
    for connection in burst:
      connection.sendall(request)
    process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    health = None
    while time.monotonic() < deadline:
      health = Client(port).request('GET', '/health')
      if health[0] == 503:
        break
      time.sleep(0.05)
    assert health[0] == 503 and json.loads(health[2])['status'] == 'stopping'
    status, refused = Client(port).predict(png_bytes(digit))
    assert status == 503 and 'stopping' in refused['error']
    for connection in slow:
      connection.sendall(request[-1:])
    answers = []
    for connection in slow + burst:
      answers.append(_read_all(connection))
    statuses = [_status_of(a) for a in answers]
    assert statuses == [200] * len(statuses), statuses
    assert all(b'"digit": 1' in a for a in answers)
    rest = process.stderr.read()
    assert process.wait(timeout=60) == 0, rest
    assert 'SIGTERM received: stopped serving' in rest
    assert 'Traceback' not in rest and 'cut off' not in rest
    with pytest.raises(OSError):  # The port is closed: refused at once.
      socket.create_connection(('127.0.0.1', port), timeout=5).close()
  finally:
    process.kill()
    process.wait()


def _read_all(connection: socket.socket) -> bytes:
  data = b''
  with connection:
    while chunk := connection.recv(65536):
      data += chunk
  return data


def test_a_port_in_use_is_one_line_before_anything_slow(trained_run):
  _, workdir, _ = trained_run
  with socket.socket() as taken:
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    port = taken.getsockname()[1]
    result = run_main('--config=configs/tiny.py', f'--workdir={workdir}',
                      '--mode=serve', f'--port={port}')
  assert_one_line_error(result, f'port {port} on 127.0.0.1 is in use',
                        '--port')


# The browser tests.


def _chromium():
  """A headless Chromium driven through Debian's chromium-driver."""
  from selenium import webdriver  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.chrome.service import Service  # pylint: disable=g-import-not-at-top
  browser = shutil.which('chromium')
  driver = shutil.which('chromedriver')
  if not (browser and driver):
    pytest.fail('the browser tests need Chromium and its driver: '
                'apt-get install chromium chromium-driver (as .ci/run does)')
  options = webdriver.ChromeOptions()
  options.binary_location = browser
  for flag in ('--headless=new', '--no-sandbox', '--disable-gpu',
               '--disable-dev-shm-usage', '--window-size=900,760',
               '--force-device-scale-factor=1'):
    options.add_argument(flag)
  return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture(scope='module')
def page(server):
  """The page open in a headless Chromium: (driver, server)."""
  driver = _chromium()
  try:
    driver.get(f'http://127.0.0.1:{server[0].port}/')
    yield driver, server
  finally:
    driver.quit()


def _strokes(digit: np.ndarray, threshold: int = 100):
  """A digit's ink as pen strokes on the 280x280 pad: one per run of ink
  pixels in each row, from its first pixel's centre to its last's."""
  strokes = []
  for y in range(28):
    ink = np.flatnonzero(digit[y] > threshold)
    if not len(ink):
      continue
    starts = np.r_[0, np.flatnonzero(np.diff(ink) > 1) + 1]
    ends = np.r_[starts[1:] - 1, len(ink) - 1]
    for s, e in zip(starts, ends):
      strokes.append(((ink[s] * 10 + 5, y * 10 + 5),
                      (ink[e] * 10 + 5, y * 10 + 5)))
  return strokes


def _wait_for_answer(driver, requests_before: int, timeout: float = 20.0):
  """The status once the page has answered a request made after
  `requests_before` and started no other."""
  deadline = time.monotonic() + timeout
  status = driver.find_element('id', 'status')
  while time.monotonic() < deadline:
    state = status.get_attribute('data-state')
    requests = int(status.get_attribute('data-requests'))
    if requests > requests_before and state in ('done', 'error'):
      time.sleep(0.4)  # No later stroke's request on its way.
      if (status.get_attribute('data-state') == state and
          int(status.get_attribute('data-requests')) == requests):
        return state, status.text
    time.sleep(0.05)
  raise AssertionError(f'the page did not answer: {status.text!r}')


def _draw(driver, strokes, pointer_kind: str) -> None:
  from selenium.webdriver.common.actions.action_builder import ActionBuilder  # pylint: disable=g-import-not-at-top
  from selenium.webdriver.common.actions.pointer_input import PointerInput  # pylint: disable=g-import-not-at-top
  pad = driver.find_element('id', 'pad')
  # One input source per kind: WebDriver keeps each id's kind for the session.
  actions = ActionBuilder(driver, mouse=PointerInput(pointer_kind,
                                                     f'{pointer_kind}-1'))
  pointer = actions.pointer_action
  for (x0, y0), (x1, y1) in strokes:
    # Selenium's offsets are from the element's centre.
    pointer.move_to(pad, int(x0) - 140, int(y0) - 140)
    pointer.pointer_down()
    pointer.move_to(pad, int(x1) - 140, int(y1) - 140)
    pointer.pointer_up()
  actions.perform()


def _confident_digits(predictor, digits, labels, count: int):
  """Indices of `count` test digits of different classes that the model
  gets right with p > 0.9 from their image files (what the page should
  then get right from their strokes)."""
  chosen, classes = [], set()
  for i, (digit, label) in enumerate(zip(digits, labels)):
    answer = predictor(predict.read_image(io.BytesIO(png_bytes(digit))))
    if (label not in classes and answer['digit'] == label and
        answer['probability'] > 0.9):
      chosen.append(i)
      classes.add(label)
      if len(chosen) == count:
        break
  return chosen


def test_digits_drawn_with_pointer_strokes_are_read_right(page):
  from selenium.webdriver.common.actions import interaction  # pylint: disable=g-import-not-at-top
  driver, (_, predictor, digits, labels) = page
  chosen = _confident_digits(predictor, digits, labels, 5)
  assert len(chosen) == 5
  kinds = [interaction.POINTER_MOUSE, interaction.POINTER_PEN,
           interaction.POINTER_TOUCH, interaction.POINTER_MOUSE,
           interaction.POINTER_PEN]
  read = []
  for i, kind in zip(chosen, kinds):
    driver.find_element('id', 'clear').click()
    status = driver.find_element('id', 'status')
    before = int(status.get_attribute('data-requests'))
    _draw(driver, _strokes(digits[i]), kind)
    state, text = _wait_for_answer(driver, before)
    assert state == 'done', text
    read.append((int(labels[i]),
                 int(driver.find_element('id', 'digit').text), kind))
    # Ten bars, the top one the digit's; the 28x28 image drawn.
    bars = driver.find_elements('css selector', '#bars li')
    assert len(bars) == 10
    assert driver.find_element('css selector', '#bars li.top').text.startswith(
        str(read[-1][1]))
  assert all(label == shown for label, shown, _ in read), read
  screenshots = os.environ.get('DIGITS_JAX_SCREENSHOT_DIR')
  if screenshots:  # For the README: the last digit drawn and read.
    driver.save_screenshot(os.path.join(screenshots, 'serve.png'))


def test_an_image_dropped_or_picked_is_read(page, tmp_path):
  driver, (_, predictor, digits, labels) = page
  i = _confident_digits(predictor, digits, labels, 1)[0]
  path = tmp_path / 'digit.png'
  path.write_bytes(png_bytes(digits[i]))
  status = driver.find_element('id', 'status')
  # Dropped: a real File in a DataTransfer, dropped on the drawing area.
  before = int(status.get_attribute('data-requests'))
  driver.execute_script('''
    const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));
    const data = new DataTransfer();
    data.items.add(new File([bytes], 'digit.png', {type: 'image/png'}));
    const zone = document.getElementById('drop-zone');
    for (const type of ['dragenter', 'dragover', 'drop']) {
      zone.dispatchEvent(new DragEvent(type, {dataTransfer: data,
                                              bubbles: true}));
    }''', __import__('base64').b64encode(path.read_bytes()).decode())
  state, text = _wait_for_answer(driver, before)
  assert (state, text) == ('done', f'digit.png: {labels[i]}')
  assert driver.find_element('id', 'digit').text == str(labels[i])
  # Picked with the file input.
  before = int(status.get_attribute('data-requests'))
  driver.find_element('id', 'file').send_keys(str(path))
  assert _wait_for_answer(driver, before) == ('done',
                                               f'digit.png: {labels[i]}')
  # A file that is not an image: the page says what the server refused.
  text_file = tmp_path / 'notes.png'
  text_file.write_text('not an image at all')
  before = int(status.get_attribute('data-requests'))
  driver.find_element('id', 'file').send_keys(str(text_file))
  state, text = _wait_for_answer(driver, before)
  assert state == 'error' and 'notes.png: not an image' in text, text
