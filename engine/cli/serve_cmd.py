"""``memengine serve``: the HTTP API (and optionally MCP) on one local port.

The server owns the store's DuckDB file for as long as it runs. It binds loopback
(127.0.0.1:8765) by default; any other address needs an API key, since the API
reads and changes every user's memories.
"""

from __future__ import annotations

import ipaddress

import click

__all__ = ["is_loopback", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1 or localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command(name="serve")
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to bind; anything but loopback needs --api-key.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@click.option("--api-key", envvar="MEMENGINE_API_KEY",
              help="Bearer token every /v1 request must send [env MEMENGINE_API_KEY].")
@click.option("--mcp-user", help="Also serve MCP tools at /mcp, fixed to this user.")
@click.option("--mcp-agent", help="The agent id of the MCP tools' scope (with --mcp-user).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, api_key: str | None,
          mcp_user: str | None, mcp_agent: str | None, log_level: str) -> None:
    """Serve the store over HTTP: the REST API at /v1, docs at /docs (works offline).

    Applications use it with curl or `engine.client.MemoryClient(url, api_key)`.
    Messages added with inference are extracted in the background.
    """
    from engine.cli import open_memory

    if api_key is not None and not api_key.strip():
        raise click.UsageError("--api-key is empty; pass a token (or leave it unset)")
    if not is_loopback(host) and not api_key:
        raise click.UsageError(
            f"refusing to bind {host} without an API key: anyone who can reach it could read "
            "and change every user's memories. Set MEMENGINE_API_KEY (or pass --api-key), or "
            f"bind {DEFAULT_HOST}."
        )
    if mcp_agent is not None and mcp_user is None:
        raise click.UsageError("--mcp-agent needs --mcp-user (the MCP tools' fixed user)")
    import uvicorn

    from engine.serving.http import create_app

    with open_memory(ctx, process_pending=True) as memory:
        memory.actor = "http"
        app = create_app(memory, api_key=api_key, mcp_user=mcp_user, mcp_agent=mcp_agent,
                         mcp_host=host)
        click.echo(f"memengine serving {memory.path} on http://{host}:{port} "
                   f"(docs: /docs; auth: {'bearer token' if api_key else 'none, loopback'})",
                   err=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
