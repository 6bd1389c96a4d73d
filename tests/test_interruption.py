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
    stop.restore()


def test_inside_the_loop_a_signal_is_recorded_for_the_next_poll():
  stop = interruption.StopSignal()
  try:
    stop.start_polling(step=5)
    assert not stop.poll(6)
    _sigterm_self()
    assert stop.received == 'SIGTERM' and stop.poll(7)
  finally:
    stop.restore()
  # After the loop, at once again, saying the training had ended.
  stop = interruption.StopSignal()
  try:
    stop.start_polling(step=0)
    stop.stop_polling()
    with pytest.raises(interruption.Interrupted) as raised:
      _sigterm_self()
    assert raised.value.after_training
  finally:
    stop.restore()
