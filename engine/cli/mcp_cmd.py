"""``memengine mcp``: the memory of one user as an MCP server over stdio.

A desktop assistant or IDE agent starts this command and talks MCP over its
stdin and stdout, so nothing else may reach stdout: logs go to stderr, and while
the server runs the SDK points file descriptor 1 at stderr too.
"""

from __future__ import annotations

import contextlib
import logging
import sys

import click

__all__ = ["mcp"]


@click.command(name="mcp")
@click.option("--user", "-u", "user_id", required=True,
              help="The user whose memory this server reads and writes (fixed: tools "
                   "cannot change it).")
@click.option("--agent", "agent_id", help="Only this agent's facts within the user.")
@click.option("--db", type=click.Path(dir_okay=False),
              help="DuckDB file of the store [default: the global --db].")
@click.option("--embedder", help="Embedding model [default: the global --embedder].")
@click.option("--lm", help="Extraction model, a GGUF name or path [default: the global --lm].")
@click.option("--infer/--raw", default=True, show_default=True,
              help="Default of add_memory: --infer extracts facts with the local LM; "
                   "--raw stores each message as one fact (no LM).")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="What is logged to stderr.")
@click.pass_context
def mcp(ctx: click.Context, user_id: str, agent_id: str | None, db: str | None,
        embedder: str | None, lm: str | None, infer: bool, log_level: str) -> None:
    """Serve one user's memory to an MCP client over stdio (until stdin closes).

    Tools: add_memory, search_memories, get_context, list_memories,
    update_memory, delete_memory, memory_history. Example client configuration:
    {"command": "memengine", "args": ["mcp", "--user", "maria"]}.
    """
    import anyio

    from engine.cli import engine_errors
    from engine.memory import Memory
    from engine.serving.mcp import build_mcp_server, run_stdio

    logging.basicConfig(stream=sys.stderr, level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = ctx.find_root().params
    with engine_errors(), contextlib.redirect_stdout(sys.stderr):
        memory = Memory(
            db or options.get("db"),
            embedder=embedder or options.get("embedder"),
            device=options.get("device"),
            extractor=lm or options.get("lm"),
            infer=infer,
            actor="mcp",
            process_pending=infer,
        )
    try:
        with engine_errors():
            server = build_mcp_server(memory, user_id=user_id, agent_id=agent_id)
        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(run_stdio, server)
    finally:
        memory.close()
