"""Serving memory to other processes: the HTTP API (:mod:`engine.serving.http`, with
the mapping of engine errors to HTTP answers in :mod:`engine.serving.errors`) and the MCP
server (:mod:`engine.serving.mcp`, tools in :mod:`engine.serving.mcp_tools`).

Each server wraps one :class:`~engine.memory.Memory` opened by its process (the process
owns the DuckDB file). Nothing here is imported by ``import engine``: FastAPI, uvicorn and
the MCP SDK load only when a server is built. The Python client that speaks the HTTP API
is :mod:`engine.client`.
"""
