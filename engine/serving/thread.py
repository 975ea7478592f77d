"""A real uvicorn server on a free loopback port, in a background thread.

For tests and benchmarks that drive the HTTP API from the same process (the
``memengine serve`` command runs uvicorn in the foreground instead).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["ThreadedServer", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThreadedServer:
    """``ThreadedServer(app)`` serves ``app`` on ``self.url`` until :meth:`stop`."""

    def __init__(self, app: Any, *, port: int | None = None, start_timeout: float = 20) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="memengine-http",
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url}")
            time.sleep(0.01)

    def stop(self) -> None:
        """Ask uvicorn to finish the requests in flight and exit; wait for it."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
