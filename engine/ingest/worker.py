"""A background thread that processes stored messages, so a chat loop never waits on the LM.

``Memory.add(..., wait=False)`` stores the messages (they are safe from then on)
and hands their ids to this worker; ``Memory.flush()`` waits until it is idle.
If the process dies first, the messages are still ``pending`` in DuckDB and are
picked up again the next time the store is opened.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["BackgroundWorker"]

log = logging.getLogger(__name__)

_STOP: list[int] = []


class BackgroundWorker:
    """Runs ``process(message_ids)`` for each submitted batch, one at a time, in order."""

    def __init__(self, process: Callable[[list[int]], object]) -> None:
        self._process = process
        self._queue: queue.Queue[list[int]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, message_ids: list[int]) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="memengine-extract", daemon=True
                )
                self._thread.start()
        self._queue.put(list(message_ids))

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            try:
                if batch is _STOP:
                    return
                self._process(batch)
            except Exception:  # the batch stays pending in the store; keep serving others
                log.exception("background extraction failed for messages %s", batch)
            finally:
                self._queue.task_done()

    def flush(self) -> None:
        """Block until every submitted batch has been processed."""
        self._queue.join()

    def stop(self) -> None:
        """Finish the batch in progress and the queue, then end the thread."""
        with self._lock:
            thread = self._thread
            self._thread = None
        if thread is not None and thread.is_alive():
            self._queue.put(_STOP)
            thread.join()
