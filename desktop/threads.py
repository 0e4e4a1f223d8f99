"""The one way BlurFlag's background threads are stopped: set the event, wake the thread, join it."""

from __future__ import annotations

import threading


def stop_thread(
    stop: threading.Event, cond: threading.Condition, thread: threading.Thread | None, timeout: float
) -> bool:
    """Ask a worker loop to end (it waits on `cond` and checks `stop`) and join it; True when it has ended."""
    stop.set()
    with cond:
        cond.notify_all()
    if thread is None:
        return True
    thread.join(timeout)
    return not thread.is_alive()
