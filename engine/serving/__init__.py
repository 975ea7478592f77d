"""Serving the engine to other processes: HTTP API, MCP server.

Each server wraps one :class:`~engine.memory.Memory` opened by its process (the
process owns the DuckDB file). The web and MCP libraries are imported inside
these modules only, so ``import engine`` stays light.
"""
