"""Following a run's metrics rows from the driver while Ray works elsewhere.

Train workers and Tune trials write their rows into the run's storage; the driver reads
them back and logs them, so the lines reach the driver's log handlers (the flow run's log
in the Prefect UI too), which a remote process's output never does.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import Any

_log = logging.getLogger(__name__)


class RowFollower:
    """Calls :meth:`poll` every ``interval_s`` seconds in a daemon thread while the
    ``with`` block runs, and once more on exit (rows written just before the work
    returned). A failing poll is logged at debug level: progress lines must never end the
    work they report on."""

    thread_name = "sqz-row-follower"

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self) -> Any:
        raise NotImplementedError

    def _poll_quietly(self) -> None:
        try:
            self.poll()
        except Exception as exc:
            _log.debug("%s: %s", self.thread_name, exc)

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._poll_quietly()

    def __enter__(self):
        # The caller's context (e.g. Prefect's flow run) goes along, so that log records
        # from this thread are attributed to the same run.
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._follow,),
                                        name=self.thread_name, daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._poll_quietly()
