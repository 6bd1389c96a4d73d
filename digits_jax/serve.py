"""`--mode=serve`: a local page to draw a digit on, over a run's best
checkpoint, and the JSON API it uses (`POST /predict`).

The server is the standard library's `ThreadingHTTPServer`: one page and one
endpoint need no framework, and it adds no dependency. Each connection has
its own thread with a socket timeout, so a slow client holds only its own
thread; the model call is serialized by a lock (one compiled program for
batches of one, compiled before the first request). What a request may
not do (a body that is too large, not an image, a decompression bomb, a
path outside the page's files) gets a status and a one-line JSON error;
nothing a client sends reaches it as a traceback.

Stopping (SIGTERM, Ctrl-C) drains: the connections already made, those
waiting in the listen queue too, are answered (within DRAIN_S); from the
signal on, `/health` answers 503 `{"status": "stopping"}` and new requests
503 with a one-line reason, so that a load balancer moves on; then the
port closes and the process exits 0.

It serves the checkpoint rather than an exported artifact: the same restore
as `--mode=predict` and `--mode=eval` (an ensemble's members, how many of
them agree), with nothing to export first.
"""

import dataclasses
import errno
import http
import http.server
import importlib.resources
import io
import json
import logging
import socket
import threading
import time

import numpy as np

from digits_jax import digit_image
from digits_jax import evaluation
from digits_jax import interruption
from digits_jax import members as members_lib
from digits_jax import predict
from digits_jax import recipe
from digits_jax import restore
from digits_jax.errors import UserError

log = logging.getLogger(__name__)

# The page's files, shipped in the package; nothing else is served.
PAGE_FILES = {'/': ('index.html', 'text/html; charset=utf-8'),
              '/index.html': ('index.html', 'text/html; charset=utf-8'),
              '/app.js': ('app.js', 'text/javascript; charset=utf-8'),
              '/style.css': ('style.css', 'text/css; charset=utf-8')}
# A photo of a digit fits well within this; larger bodies are refused from
# their Content-Length, before any of it is read.
MAX_BODY_BYTES = 10 * 1024 * 1024
# Seconds a client may take to send its request (each read); a slower one
# is answered 408 and dropped.
CLIENT_TIMEOUT_S = 10.0
# How long a stopping server waits for the requests it had accepted; a
# client slower than this (CLIENT_TIMEOUT_S per read) is cut off.
DRAIN_S = 20.0
# Request bodies taken as an image file: images, raw bytes, and what
# `curl --data-binary` sends when not told otherwise.
IMAGE_CONTENT_TYPES = ('image/', 'application/octet-stream',
                       'application/x-www-form-urlencoded')


class Predictor:
  """The best checkpoint of a run, predicting one digit at a time."""

  def __init__(self, config, members, workdir, platform, member: str = ''):
    restored = restore.restore_best(config, members, workdir, platform,
                                    member)
    # One digit a request, on this process's first device; the members'
    # weights placed there once, not per request.
    self._evaluator = evaluation.Evaluator(
        restored.model, restored.preprocess, 1, restored.platform,
        members=restored.members)
    self._state = self._evaluator.place(restored.state)
    self._lock = threading.Lock()
    self.num_models = restored.members.num_models
    self.step = restored.step
    # Compiled now, not on a request.
    self(np.zeros(recipe.data_record(restored.meta)['image_shape'][:2],
                  np.uint8))

  def __call__(self, digit: np.ndarray) -> dict:
    """predict's JSON for a uint8 [H, W] digit (MNIST's 28x28)."""
    with self._lock:
      member_logits = self._evaluator.member_logits(self._state, digit[None])
    probabilities = np.exp(members_lib.combine(member_logits))[0]
    agreeing = members_lib.agreement(member_logits)[0]
    return predict.prediction(probabilities, agreeing, self.num_models)


@dataclasses.dataclass
class _Refusal(Exception):
  """A request answered with `status` and a one-line `message`."""
  status: int
  message: str


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
  content_type = handler.headers.get('Content-Type', '').lower()
  if content_type and not content_type.startswith(IMAGE_CONTENT_TYPES):
    raise _Refusal(http.HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                   f'Content-Type {content_type!r} is not an image: send the '
                   'image file itself as the body (e.g. image/png), not a '
                   'form or JSON')
  if 'chunked' in handler.headers.get('Transfer-Encoding', '').lower():
    raise _Refusal(http.HTTPStatus.LENGTH_REQUIRED,
                   'chunked bodies are not accepted: send Content-Length')
  length = handler.headers.get('Content-Length')
  if length is None:
    raise _Refusal(http.HTTPStatus.LENGTH_REQUIRED,
                   'no Content-Length: send the image file as the body')
  try:
    length = int(length)
  except ValueError:
    length = -1
  if length < 0:
    raise _Refusal(http.HTTPStatus.BAD_REQUEST,
                   f'Content-Length {handler.headers["Content-Length"]!r} is '
                   'not a size in bytes')
  if length > MAX_BODY_BYTES:
    raise _Refusal(http.HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                   f'the body is {length:,} bytes, more than the '
                   f'{MAX_BODY_BYTES:,} accepted: crop or shrink the image')
  if length == 0:
    raise _Refusal(http.HTTPStatus.BAD_REQUEST,
                   'the body is empty: send the image file as the body')
  body = handler.rfile.read(length)  # The socket timeout bounds each read.
  if len(body) < length:
    raise _Refusal(http.HTTPStatus.BAD_REQUEST,
                   f'the body ended after {len(body):,} of {length:,} bytes')
  return body


def _digit_from(body: bytes) -> np.ndarray:
  try:
    return predict.read_image(io.BytesIO(body))
  except digit_image.ImageError as e:
    raise _Refusal(http.HTTPStatus.UNPROCESSABLE_ENTITY, str(e)) from None


class Handler(http.server.BaseHTTPRequestHandler):
  """GET the page's files; POST /predict an image file."""

  server_version = 'digits_jax'

  def setup(self):
    self.timeout = self.server.client_timeout_s  # Each read on the socket.
    super().setup()

  @property
  def predictor(self) -> Predictor:
    return self.server.predictor

  def do_GET(self):  # pylint: disable=invalid-name
    path = self.path.split('?', 1)[0]
    if path == '/health':
      stopping = self.server.stopping.is_set()
      self._send_json(
          http.HTTPStatus.SERVICE_UNAVAILABLE if stopping
          else http.HTTPStatus.OK, {
              'status': 'stopping' if stopping else 'ok',
              'num_models': self.predictor.num_models,
              'checkpoint_step': self.predictor.step})
      return
    if not self.server.admitted():
      self._refuse_while_stopping()
      return
    if path not in PAGE_FILES:
      self._send_json(http.HTTPStatus.NOT_FOUND,
                      {'error': f'no page at {path[:100]!r}; open /'})
      return
    name, content_type = PAGE_FILES[path]
    body = importlib.resources.files('digits_jax').joinpath(
        'serve_page', name).read_bytes()
    self._send(http.HTTPStatus.OK, body, content_type)

  def do_POST(self):  # pylint: disable=invalid-name
    start = time.perf_counter()
    if not self.server.admitted():
      self._refuse_while_stopping()
      return
    try:
      if self.path.split('?', 1)[0] != '/predict':
        raise _Refusal(http.HTTPStatus.NOT_FOUND,
                       f'no endpoint at {self.path[:100]!r}; POST /predict')
      digit = _digit_from(_read_body(self))
      result = self.predictor(digit)
      result['input'] = digit.tolist()
      self._send_json(http.HTTPStatus.OK, result)
    except _Refusal as refusal:
      self.close_connection = True  # The rest of the body may be unread.
      self._send_json(refusal.status, {'error': refusal.message})
    except (TimeoutError, socket.timeout):
      self.close_connection = True
      self._send_json(http.HTTPStatus.REQUEST_TIMEOUT,
                      {'error': 'the request body came too slowly'})
    except (ConnectionError, BrokenPipeError):
      self.close_connection = True  # The client left; nobody to answer.
    except Exception:  # pylint: disable=broad-except
      log.exception('POST /predict failed')  # The server's log, not the
      self.close_connection = True            # client's.
      self._send_json(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                      {'error': 'internal error (the server log says more)'})
    finally:
      log.debug('POST %s %.1f ms', self.path[:100],
                (time.perf_counter() - start) * 1e3)

  def _refuse_while_stopping(self) -> None:
    self.close_connection = True
    self._send_json(http.HTTPStatus.SERVICE_UNAVAILABLE, {
        'error': 'the server is stopping: send the request to another '
                 'instance, or again once it is back'})

  def send_error(self, code, message=None, explain=None):
    """The standard library's own refusals (a malformed request line, an
    oversized header) as JSON too, with a status line even for a request
    that named no HTTP version."""
    self.request_version = 'HTTP/1.0'
    self.close_connection = True
    self._send_json(code, {'error': message or http.HTTPStatus(code).phrase})

  def _send_json(self, status: int, payload: dict) -> None:
    self._send(status, json.dumps(payload).encode(), 'application/json')

  def _send(self, status: int, body: bytes, content_type: str) -> None:
    try:
      self.send_response(status)
      self.send_header('Content-Type', content_type)
      self.send_header('Content-Length', str(len(body)))
      self.send_header('Cache-Control', 'no-store')
      self.send_header('X-Content-Type-Options', 'nosniff')
      self.end_headers()
      self.wfile.write(body)
    except (ConnectionError, BrokenPipeError, TimeoutError, socket.timeout):
      self.close_connection = True

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    log.debug(format, *args)  # Not one stderr line per request.


class Server(http.server.ThreadingHTTPServer):
  """One thread per connection; `predictor` answers POST /predict.

  Each connection is admitted (answered) or, once the server is stopping,
  refused with 503; `drain` stops it. Admitted connections are counted, so
  that a stop can wait for them."""

  daemon_threads = True  # A stuck client never keeps the process alive.
  # The listen queue (socketserver's default is 5): a burst of clients
  # waits there instead of having its connections dropped and retried.
  request_queue_size = 128

  def __init__(self, address, client_timeout_s: float = CLIENT_TIMEOUT_S):
    self.client_timeout_s = client_timeout_s
    self.predictor: Predictor | None = None
    self.stopping = threading.Event()
    self._connection = threading.local()
    self._in_flight = 0
    self._idle = threading.Condition()
    super().__init__(address, Handler)

  def process_request(self, request, client_address):
    admitted = not self.stopping.is_set()
    if admitted:
      with self._idle:
        self._in_flight += 1
    threading.Thread(target=self._serve_connection,
                     args=(request, client_address, admitted),
                     daemon=True).start()

  def _serve_connection(self, request, client_address, admitted: bool):
    self._connection.admitted = admitted
    try:
      self.finish_request(request, client_address)
    except Exception:  # pylint: disable=broad-except
      self.handle_error(request, client_address)
    finally:
      self.shutdown_request(request)
      if admitted:
        with self._idle:
          self._in_flight -= 1
          self._idle.notify_all()

  def admitted(self) -> bool:
    """Whether this thread's connection came before the stop."""
    return getattr(self._connection, 'admitted', True)

  def handle_error(self, request, client_address):
    # A client that misbehaves below HTTP (a reset, a timeout on the request
    # line) costs one debug line, never a traceback on the server's stderr.
    log.debug('connection from %s failed', client_address, exc_info=True)

  def drain(self, within_s: float = DRAIN_S) -> int:
    """Stops serving (the loop must run in another thread): the connections
    already made or waiting in the listen queue are admitted and answered,
    later ones refused with 503 while they are; waits up to `within_s` for
    them, then closes the port. Returns how many were left unanswered."""
    self.shutdown()  # The loop stops accepting; the queue holds the rest.
    self.socket.setblocking(False)
    while True:
      try:
        request, client_address = self.get_request()
      except OSError:  # BlockingIOError: the queue is empty.
        break
      self.process_request(request, client_address)
    self.socket.setblocking(True)
    self.stopping.set()
    refusing = threading.Thread(target=self.serve_forever,
                                kwargs={'poll_interval': 0.05}, daemon=True)
    refusing.start()
    with self._idle:
      self._idle.wait_for(lambda: self._in_flight == 0, timeout=within_s)
      unanswered = self._in_flight
    self.shutdown()
    self.server_close()
    return unanswered


def make_server(host: str, port: int,
                client_timeout_s: float = CLIENT_TIMEOUT_S) -> Server:
  """The server bound to `host`:`port` (0: a free one), before anything
  slow: a port in use is one line at once. Not started; give it a
  `predictor` first."""
  try:
    return Server((host, port), client_timeout_s)
  except OSError as e:
    if e.errno == errno.EADDRINUSE:
      raise UserError(f'port {port} on {host} is in use; choose another with '
                      '--port') from None
    raise UserError(f'cannot listen on {host}:{port} ({e.strerror or e}); '
                    'check --host and --port') from None


def serve(config, members, workdir, platform, host: str, port: int,
          member: str = '') -> None:
  """Serves until stopped (Ctrl-C or SIGTERM: it drains, see the module's
  docstring, and main turns the signal into one line and exit code 0)."""
  server = make_server(host, port)
  try:
    server.predictor = predictor = Predictor(config, members, workdir,
                                             platform, member)
  except BaseException:
    server.server_close()
    raise
  # The loop in a thread of its own, so that the signal (raised in this,
  # the main thread) leaves it running while the accepted requests drain;
  # from its start on, a signal drains.
  loop = threading.Thread(target=server.serve_forever,
                          kwargs={'poll_interval': 0.05}, daemon=True)
  try:
    loop.start()
    _log_serving(predictor, host, *server.server_address[:2])
    while loop.is_alive():
      time.sleep(0.5)  # Where the signal lands.
  except interruption.Interrupted:
    if loop.is_alive():
      log.info('Stopping: answering the requests already accepted (up to '
               '%.0f s), refusing new ones with 503.', DRAIN_S)
      unanswered = server.drain()
      if unanswered:
        log.warning('%d request(s) were still unanswered after %.0f s and '
                    'were cut off.', unanswered, DRAIN_S)
    raise
  finally:
    server.server_close()


def _log_serving(predictor: Predictor, host: str, address: str,
                 port: int) -> None:
  shown = f'[{address}]' if ':' in address else address
  what = (f'an ensemble of {predictor.num_models}'
          if predictor.num_models > 1 else 'the model')
  log.info('Serving %s (best checkpoint, step %d) at http://%s:%d/ ; '
           'Ctrl-C stops.', what, predictor.step, shown, port)
  if host not in ('127.0.0.1', 'localhost', '::1'):
    log.warning('Listening on %s: other machines that reach port %d can use '
                'it.', host, port)
