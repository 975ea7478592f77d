"""No network, proved: the CLI runs under an audit hook that refuses and logs any
connection or DNS lookup beyond loopback, installed by ``sitecustomize`` before the first
import, with none of the offline variables set by the caller (the engine must set them)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_gguf

from engine import netguard

REPO = Path(__file__).resolve().parent.parent
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LITELLM_LOCAL_MODEL_COST_MAP",
                     "HF_DATASETS_OFFLINE")


def guarded_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose Python processes run under :mod:`engine.netguard` from start."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os\nfrom engine import netguard\nnetguard.install(os.environ['NETGUARD_LOG'])\n"
    )
    log = tmp_path / "network-attempts.log"
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_VARIABLES}
    env.update(PYTHONPATH=os.pathsep.join([str(site), str(REPO)]), NETGUARD_LOG=str(log),
               MEMENGINE_KV_DIR="")
    return env, log


def run_guarded(args: list[str], env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


def test_the_guard_refuses_and_logs_a_real_attempt(tmp_path: Path) -> None:
    """The positive control: without it a silent log would prove nothing."""
    env, log = guarded_env(tmp_path)
    code = ("import urllib.request\ntry:\n    urllib.request.urlopen('http://example.com',"
            " timeout=2)\nexcept OSError as exc:\n    print(type(exc).__name__)\n")
    out = run_guarded(["-c", code], env)
    assert "URLError" in out or "NetworkRefusedError" in out
    assert "example.com" in log.read_text()


def test_loopback_and_unix_sockets_still_work_in_the_suite() -> None:
    left, right = socket.socketpair()
    left.sendall(b"x")
    assert right.recv(1) == b"x"
    left.close()
    right.close()
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()
    with pytest.raises(netguard.NetworkRefusedError, match=r"example\.org"):
        socket.getaddrinfo("example.org", 443)
    assert netguard.attempts(clear=True) == ["socket.getaddrinfo example.org:443 (DNS lookup)"]


@pytest.mark.model
def test_cli_with_the_lm_makes_no_network_attempt(tmp_path: Path) -> None:
    require_gguf("smollm2-135m")
    env, log = guarded_env(tmp_path)
    db = str(tmp_path / "offline.duckdb")
    base = ["-m", "engine", "--db", db, "--lm", "smollm2-135m"]
    run_guarded([*base, "add", "-u", "maria", "I live in Lisbon and I love coffee"], env)
    assert "-" in run_guarded([*base, "search", "-u", "maria", "where does she live?"], env)
    run_guarded(["-m", "engine", "models", "verify"], env)
    out = run_guarded(["-m", "engine", "--db", str(tmp_path / "demo.duckdb"), "--lm",
                       "smollm2-135m", "demo"], env)
    assert "current facts" in out
    assert not log.exists(), f"network attempts: {log.read_text()}"
