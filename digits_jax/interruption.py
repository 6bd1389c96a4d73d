"""Stopping cleanly on SIGTERM, Ctrl-C or a closed terminal (SIGHUP), on
one host or several, at any moment of a run."""

import contextlib
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)


class Interrupted(BaseException):
  """A stop signal that arrived where stopping at once leaves nothing half
  done: before the training loop (loading data, restoring, compiling: no
  checkpoint written yet), after it (the checkpoints saved), or in a mode
  that writes each of its files whole. A BaseException, as
  KeyboardInterrupt is: no library's `except Exception` takes it."""

  def __init__(self, signal_name: str, after_training: bool):
    super().__init__(signal_name)
    self.signal_name = signal_name
    self.after_training = after_training


# What stops a run cleanly. SIGHUP: the terminal or the ssh session that
# started the run closed (no nohup); it stops as SIGTERM does, after the
# standard streams that were that terminal are pointed at /dev/null (a
# write to a hung-up terminal fails, and would end the run mid-save).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# How long after a signal that landed where Python cannot raise it is
# delivered again.
REDELIVERY_S = 0.05


class StopSignal:
  """Turns SIGTERM, SIGHUP (and, on one host, SIGINT) into a clean stop,
  from the moment it is created (the start of `main`).

  Outside the training loop the handler raises `Interrupted` wherever the
  program is, which `main` turns into one line and exit code 0: nothing is
  being written there that stopping could leave partial (every file is
  written whole, checkpoints by orbax's rename). Inside the loop
  (`start_polling` .. `stop_polling`) it only records the signal; the loop
  polls once per dispatch, writes a checkpoint and returns, and rerunning
  the same command resumes from it. A second signal acts as usual.

  Several processes: every host must save the same step, or the collective
  save waits forever. JAX's preemption service (started by
  `jax.distributed.initialize`, whose own SIGTERM handler replaces this
  one's) catches SIGTERM on whichever host gets it and tells the others;
  each host then reports the last counter it passed to
  `multihost_utils.reached_preemption_sync_point`, and the sync point is one
  above the largest, answered True for exactly that value. Orbax's save
  asks the same sync point with the training step, so the counter here is
  the training step too, and every step a dispatch covered is offered in
  turn: whenever the notice comes (mid-epoch, during validation or a save),
  all hosts stop after the same dispatch, the first to pass the sync point.
  SIGINT gets its default back in the loop (it usually reaches a single
  host, which must not stop alone). SIGHUP there is sent on to this process
  as SIGTERM, for JAX's service to share. A SIGTERM before the cluster is
  joined stops that host alone, and the others' `initialize` times out.

  A signal can land where Python cannot raise (a gc callback of JAX's, a
  `__del__`): Python would print the exception and go on. There it is
  delivered again a moment later (`sys.unraisablehook`), and if the loop
  starts first, raised there.
  """

  def __init__(self):
    self.received = None
    self._polling = False
    self._after_training = False
    self._multihost = False
    self._offered_step = 0
    self._pending = None
    self._deferring = 0
    self._held_back = None
    self._previous = {}
    self._previous_unraisable = None
    self._terminals = set()
    if threading.current_thread() is threading.main_thread():
      self._install(STOP_SIGNALS)
      self._previous_unraisable = sys.unraisablehook
      sys.unraisablehook = self._unraisable
      for fd in (1, 2):
        try:
          if os.isatty(fd):
            self._terminals.add(fd)
        except OSError:
          pass

  def _install(self, signals) -> None:
    for sig in signals:
      previous = signal.signal(sig, self._handle)
      self._previous.setdefault(sig, previous)

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if signum == signal.SIGHUP:
      self._leave_the_terminal()
      if self._polling and self._multihost:
        # JAX's preemption service shares SIGTERM with every host.
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if self._polling and self._multihost:
      return  # JAX's preemption service stops every host (see above).
    self.restore()  # A second signal acts as usual.
    if not self._polling:
      # Kept too: raised where Python ignores exceptions (the signal can
      # land in a gc callback of JAX's, which prints it and goes on), it is
      # raised again when the loop starts.
      self._pending = Interrupted(name, self._after_training)
      if self._deferring:
        self._held_back = self._pending  # Raised when the section ends.
        return
      raise self._pending
    self.received = name
    log.warning('%s received: stopping after the current steps.', name)

  def _leave_the_terminal(self) -> None:
    """Standard output and error that were a terminal now go to /dev/null:
    after a hang-up every write to it fails (EIO)."""
    if not self._terminals:
      return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
      for fd in self._terminals:
        os.dup2(null, fd)
    finally:
      os.close(null)
    self._terminals = set()

  def _unraisable(self, unraisable) -> None:
    if isinstance(unraisable.exc_value, Interrupted):
      # Raised where Python only prints it and goes on: delivered again
      # outside, with this handler back in place.
      signum = signal.Signals[unraisable.exc_value.signal_name]
      self._install([signum])
      timer = threading.Timer(REDELIVERY_S, os.kill, (os.getpid(), signum))
      timer.daemon = True
      timer.start()
      return
    (self._previous_unraisable or sys.__unraisablehook__)(unraisable)

  @contextlib.contextmanager
  def deferred(self):
    """A section a stop signal must not cut in two (the workdir's lock taken
    or given back: cut there, a lock would outlive its run). A signal that
    arrives in it is raised as it ends, unless an exception already ends
    it."""
    self._deferring += 1
    try:
      yield
    finally:
      self._deferring -= 1
    held_back, self._held_back = self._held_back, None
    if held_back is not None and not self._deferring:
      raise held_back

  def start_polling(self, step: int) -> None:
    """The training loop begins at training step `step`: from here a signal
    is recorded for `poll`."""
    import jax  # pylint: disable=g-import-not-at-top
    if self._pending is not None:
      raise self._pending
    self._offered_step = step
    self._multihost = jax.process_count() > 1
    if self._multihost:
      # SIGTERM is JAX's now (setting any handler would take it away);
      # SIGINT back to its default.
      self._previous.pop(signal.SIGTERM, None)
      previous = self._previous.pop(signal.SIGINT, None)
      if previous is not None:
        signal.signal(signal.SIGINT, previous)
    self._polling = True

  def stop_polling(self) -> None:
    """The loop has ended (its checkpoints saved): a signal stops at once
    again."""
    self._polling = False
    self._after_training = True

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

  def restore(self) -> None:
    """The handlers as they were before this one (the unraisable hook stays
    until `close`: a signal raised where Python cannot raise is still this
    one's to deliver again)."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def close(self) -> None:
    """Everything as it was before this one."""
    self.restore()
    if (self._previous_unraisable is not None
        and sys.unraisablehook == self._unraisable):
      sys.unraisablehook = self._previous_unraisable
    self._previous_unraisable = None
