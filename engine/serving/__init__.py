"""Serving memory to other processes: the HTTP API (:mod:`engine.serving.http`) and
the mapping of engine errors to HTTP answers (:mod:`engine.serving.errors`).

Nothing here is imported by ``import engine``: FastAPI and uvicorn load only when a
server is built. The Python client that speaks this API is :mod:`engine.client`.
"""
