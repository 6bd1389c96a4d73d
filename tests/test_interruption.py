"""StopSignal in this process: what a SIGTERM does outside and inside the
training loop (the loop's own stops, through the CLI: test_reliability.py,
and on two hosts: test_parallel.py)."""

import os
import signal

import pytest

from digits_jax import interruption


def _sigterm_self():
  os.kill(os.getpid(), signal.SIGTERM)


def test_outside_the_loop_a_signal_stops_at_once():
  previous = signal.getsignal(signal.SIGTERM)
  stop = interruption.StopSignal()
  try:
    with pytest.raises(interruption.Interrupted) as raised:
      _sigterm_self()
    assert raised.value.signal_name == 'SIGTERM'
    assert not raised.value.after_training
    # Not an Exception: no library's `except Exception` swallows it.
    assert not isinstance(raised.value, Exception)
    # The handler is back to what it was: a second signal acts as usual.
    assert signal.getsignal(signal.SIGTERM) is previous
  finally:
    stop.close()


def test_inside_the_loop_a_signal_is_recorded_for_the_next_poll():
  stop = interruption.StopSignal()
  try:
    stop.start_polling(step=5)
    assert not stop.poll(6)
    _sigterm_self()
    assert stop.received == 'SIGTERM' and stop.poll(7)
  finally:
    stop.close()
  # After the loop, at once again, saying the training had ended.
  stop = interruption.StopSignal()
  try:
    stop.start_polling(step=0)
    stop.stop_polling()
    with pytest.raises(interruption.Interrupted) as raised:
      _sigterm_self()
    assert raised.value.after_training
  finally:
    stop.close()


def test_a_closed_terminal_sighup_stops_as_sigterm_does():
  stop = interruption.StopSignal()
  try:
    stop.start_polling(step=0)
    os.kill(os.getpid(), signal.SIGHUP)
    assert stop.received == 'SIGHUP' and stop.poll(1)
  finally:
    stop.close()
  stop = interruption.StopSignal()
  try:
    with pytest.raises(interruption.Interrupted) as raised:
      os.kill(os.getpid(), signal.SIGHUP)
    assert raised.value.signal_name == 'SIGHUP'
  finally:
    stop.close()


def test_a_signal_python_could_not_raise_is_delivered_again():
  """A SIGTERM landing in a gc callback (JAX has one): Python prints the
  exception and goes on. It comes again a moment later, outside it, and
  nothing is printed."""
  import gc  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  stop = interruption.StopSignal()
  printed = []
  fired = []

  def in_gc(phase, info):
    del info
    if phase == 'start' and not fired:
      fired.append(True)
      stop._handle(signal.SIGTERM, None)  # pylint: disable=protected-access

  previous_hook = stop._previous_unraisable  # pylint: disable=protected-access
  stop._previous_unraisable = printed.append  # pylint: disable=protected-access
  gc.callbacks.append(in_gc)
  try:
    with pytest.raises(interruption.Interrupted) as raised:
      gc.collect()  # Python swallows what the callback raises.
      assert fired
      time.sleep(5)  # The signal comes again before this ends.
    assert raised.value.signal_name == 'SIGTERM'
    assert not printed
  finally:
    gc.callbacks.remove(in_gc)
    stop._previous_unraisable = previous_hook  # pylint: disable=protected-access
    stop.close()
  assert sys.unraisablehook is not stop._unraisable  # pylint: disable=protected-access


def test_a_swallowed_start_up_signal_is_raised_when_the_loop_starts():
  stop = interruption.StopSignal()
  try:
    try:
      stop._handle(signal.SIGTERM, None)  # pylint: disable=protected-access
    except interruption.Interrupted:
      pass  # Swallowed, as an `except BaseException` in a library would.
    with pytest.raises(interruption.Interrupted) as raised:
      stop.start_polling(step=0)
    assert not raised.value.after_training
  finally:
    stop.close()
