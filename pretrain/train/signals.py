"""Stop signals of a training process, and the exit codes that report how it stopped.

A rank stops at a step boundary, after a collective checkpoint, when any rank received one of
:data:`STOP_SIGNALS` (the ranks agree with an all-reduce of :attr:`StopSignal.requested` in the
loop): SIGTERM (Slurm's requeue, preemption, ``scancel``), SIGUSR2 (submitit's warning signal
before the time limit, ``--signal=USR2@T``), SIGUSR1, and SIGINT (Ctrl-C). A second Ctrl-C stops
at once. This module imports nothing heavy, so an entry point installs the handler before its
slow start-up (torch, the process group, the model, the data loaders).

Exit codes of ``perceiver train`` (every rank, and the ``--nproc-per-node`` launcher):

* 0: finished, or stopped at ``--stop-at-step``;
* :data:`EXIT_PREEMPTED` (75): stopped by a signal after writing a checkpoint; run the same
  command again to resume;
* :data:`EXIT_INTERRUPTED` (130): stopped at once by a second Ctrl-C, the current step unsaved
  (a checkpoint being written is left without its ``COMPLETE`` marker: invisible to resume).
"""

from __future__ import annotations

import os
import signal

EXIT_PREEMPTED = 75  # sysexits' EX_TEMPFAIL: try again (resume)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopSignal:
    """Sets :attr:`requested` on a stop signal; a second SIGINT raises ``KeyboardInterrupt``.

    Installed (in the main thread) when created; :meth:`restore` puts the previous handlers back.

    Args:
        signals: The signals to own.
        announce: Write one line to stderr when the first signal arrives (rank 0).
    """

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS, announce: bool = False) -> None:
        self.requested = False
        self.signum: int | None = None
        self.announce = announce
        self._interrupts = 0
        self._previous = {}
        for s in signals:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test harness thread)
                pass

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1:
                raise KeyboardInterrupt
        if self.announce and not self.requested:
            again = " (Ctrl-C again: stop at once)" if signum == signal.SIGINT else ""
            name = signal.Signals(signum).name
            # os.write, not print: a handler may interrupt a print of the main thread.
            os.write(2, f"perceiver: {name}: saving at the next step boundary{again}\n".encode())
        self.requested = True
        self.signum = signum

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}
