"""Liveness of a streaming job whose workers run in the launching process (Prism's LOOPBACK workers).

The commit step beats at every item it sees, and a ticker sends it one every commit interval even when the topics
are quiet, so a job whose commit step has not run for many intervals is stuck: the runner has stopped handing out
work (seen with Prism 2.77 after restarts, rarely). A stuck job that keeps running hides it; one that exits is
restarted by its supervisor (systemd, Kubernetes) and resumes exactly from the stored offsets. The watchdog is armed
by the first beat, so with workers in other processes (Flink, Dataflow) it never fires.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time

log = logging.getLogger("journeys.liveness")
EXIT_STALLED = 4
_last_beat: float | None = None


def beat() -> None:
    global _last_beat
    _last_beat = time.monotonic()


def watch(stalled_after_s: float, every_s: float = 5.0) -> threading.Thread:
    """A daemon thread that ends the process (exit 4) when the beats stop for `stalled_after_s`."""
    def run():
        while True:
            time.sleep(every_s)
            if _last_beat is not None and time.monotonic() - _last_beat > stalled_after_s:
                log.error("stalled: the commit step has not run for %.0f s (the runner hands out no work); "
                          "exiting with %d so that a supervisor restarts the job, which resumes from the stored "
                          "offsets. Where each thread waited:", time.monotonic() - _last_beat, EXIT_STALLED)
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(EXIT_STALLED)

    thread = threading.Thread(target=run, name="liveness-watchdog", daemon=True)
    thread.start()
    return thread
