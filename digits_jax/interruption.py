"""Stopping cleanly on SIGTERM or Ctrl-C, on one host or several."""

import logging
import signal
import threading

import jax

log = logging.getLogger(__name__)


class StopSignal:
  """Turns SIGTERM (and, on one host, SIGINT) into a request to stop cleanly.

  The loop polls it once per dispatch; when it says stop, the loop writes a
  checkpoint and returns, and rerunning the same command resumes from it.

  One process: a Python handler records the first SIGTERM or SIGINT (a
  second one acts as usual).

  Several processes: every host must save the same step, or the collective
  save waits forever. JAX's preemption service (started by
  `jax.distributed.initialize`) catches SIGTERM on whichever host gets it
  and tells the others; each host then reports the last counter it passed
  to `multihost_utils.reached_preemption_sync_point`, and the sync point is
  one above the largest, answered True for exactly that value. Orbax's save
  asks the same sync point with the training step, so the counter here is
  the training step too, and every step a dispatch covered is offered in
  turn: whenever the notice comes (mid-epoch, during validation or a save),
  all hosts stop after the same dispatch, the first to pass the sync point.
  No Python SIGTERM handler is installed then: it would take the signal away
  from JAX's. SIGINT keeps its default (it usually reaches a single host).
  """

  def __init__(self, step: int):
    """`step`: the training step the run starts (or resumes) at."""
    self.received = None
    self._multihost = jax.process_count() > 1
    self._offered_step = step
    self._previous = {}
    signals = () if self._multihost else (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.received = signal.Signals(signum).name
    log.warning('%s received: stopping after the current steps.',
                self.received)
    self.restore()

  def poll(self, step: int) -> bool:
    """Whether to stop now, at training step `step`; called after every
    dispatch, on every host."""
    if self._multihost and self.received is None:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      for offered in range(self._offered_step + 1, step + 1):
        if multihost_utils.reached_preemption_sync_point(offered):
          self.received = 'SIGTERM'
          log.warning('Preemption notice (SIGTERM on some host): all '
                      'hosts stop at step %d.', step)
          break
      self._offered_step = step
    return self.received is not None

  def restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
