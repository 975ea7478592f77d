"""A process-wide guard that refuses every connection or name lookup beyond loopback.

The engine promises to run without a network. This is the proof, and a seat belt for
air-gapped deployments: :func:`install` adds a ``sys.addaudithook`` hook that sees every
``socket.connect``, ``socket.sendto``, ``socket.getaddrinfo`` and ``gethostbyname``
made by Python code (any library, any thread) and refuses those that would leave the
machine, with a :class:`NetworkRefusedError` naming the destination. Loopback
(``127.0.0.0/8``, ``::1``, ``localhost``) and ``AF_UNIX`` sockets (asyncio's socket
pairs, stdio servers) keep working. Every refused attempt is also recorded, so a library
that swallows the error is still caught (:func:`attempts`).

The test suite installs it for every test (``tests/conftest.py``), and a
``sitecustomize`` that calls it puts a whole process under it from its first import
(``tests/test_offline.py``). Audit hooks cannot be removed, so install it once per process.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
from typing import Any

__all__ = ["NetworkRefusedError", "attempts", "install", "installed", "is_loopback"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                             "ip6-loopback"})
_attempts: list[str] = []
_lock = threading.Lock()
_state: dict[str, Any] = {"installed": False, "log": None}


class NetworkRefusedError(ConnectionRefusedError):
    """A connection or name lookup beyond loopback was attempted while the guard is on."""


def is_loopback(host: object) -> bool:
    """Whether ``host`` (a name, an address, or None for "any local") stays on this machine."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    name = host.strip().strip("[]").lower()
    if name in ("", "0.0.0.0", "::") or name in _LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False  # a host name: looking it up is already network traffic
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _destination(event: str, args: tuple[Any, ...]) -> str | None:
    """The non-loopback destination of a socket audit event, or None when it is local."""
    if event in ("socket.connect", "socket.sendto"):
        sock, address = args[0], args[1]
        if getattr(sock, "family", None) == getattr(socket, "AF_UNIX", None):
            return None
        host = address[0] if isinstance(address, tuple) and address else address
        port = address[1] if isinstance(address, tuple) and len(address) > 1 else None
        return None if is_loopback(host) else f"{host}:{port}"
    if event == "socket.getaddrinfo":
        return None if is_loopback(args[0]) else f"{args[0]}:{args[1]} (DNS lookup)"
    if event in ("socket.gethostbyname", "socket.gethostbyname_ex"):
        return None if is_loopback(args[0]) else f"{args[0]} (DNS lookup)"
    if event == "socket.gethostbyaddr":
        return None if is_loopback(args[0]) else f"{args[0]} (reverse DNS lookup)"
    return None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if not event.startswith("socket."):
        return
    where = _destination(event, args)
    if where is None:
        return
    record = f"{event} {where}"
    with _lock:
        _attempts.append(record)
        log_path = _state["log"]
    if log_path:
        # Appended and flushed at once: a test in another process reads it after we exit.
        with open(log_path, "a", encoding="utf-8") as handle:
            handle.write(record + "\n")
    raise NetworkRefusedError(
        f"network access refused: {record}. memengine runs offline; only loopback "
        "connections are allowed"
    )


def install(log_path: str | os.PathLike[str] | None = None) -> None:
    """Refuse non-loopback network access in this process from now on (idempotent).

    ``log_path``: a file that gets one line per refused attempt (for a parent process
    checking a child).
    """
    with _lock:
        if log_path is not None:
            _state["log"] = os.fspath(log_path)
        if _state["installed"]:
            return
        _state["installed"] = True
    sys.addaudithook(_hook)


def installed() -> bool:
    """Whether :func:`install` has run in this process."""
    return bool(_state["installed"])


def attempts(*, clear: bool = False) -> list[str]:
    """The refused attempts so far (``clear``: and forget them)."""
    with _lock:
        seen = list(_attempts)
        if clear:
            _attempts.clear()
    return seen
