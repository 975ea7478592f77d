"""Engine errors as HTTP answers, and back.

Every error answer has a JSON body ``{"error": <engine error class name>, "message":
<what to do>}`` (validation errors add ``"detail"``), so a client can raise the same
:class:`~engine.errors.EngineError` subclass the server raised
(:func:`error_class`). Bad input never answers 500: the status says whose move it is.

=====  ==========================================================================
400    InvalidInputError, ScopeRequiredError (no user_id), ImportFormatError, a malformed
       request
401    AuthenticationError: no or wrong bearer token
404    FactNotFoundError
409    StateConflictError (the fact's state forbids it), EmbedderMismatchError,
       SchemaVersionError
413    TooLargeError: a text, list or body over its limit
423    StoreLockedError
507    DiskFullError: no space left for the store
503    ModelError and its subclasses, ExtractionError: the LM is missing or not ready
500    anything else (a fault of the server, logged with its traceback)
=====  ==========================================================================
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from engine import errors

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

__all__ = ["STATUS_BY_ERROR", "error_body", "error_class", "install_error_handlers",
           "status_for"]

log = logging.getLogger(__name__)

STATUS_BY_ERROR: tuple[tuple[type[errors.EngineError], int], ...] = (
    # Most specific first: the first class the error is an instance of wins.
    (errors.StateConflictError, 409),
    (errors.TooLargeError, 413),
    (errors.InvalidInputError, 400),
    (errors.ImportFormatError, 400),
    (errors.FactNotFoundError, 404),
    (errors.StoreLockedError, 423),
    (errors.DiskFullError, 507),
    (errors.EmbedderMismatchError, 409),
    (errors.SchemaVersionError, 409),
    (errors.ModelError, 503),
    (errors.ExtractionError, 503),
    (errors.AuthenticationError, 401),
)

TOO_LARGE = {"string_too_long", "too_long"}
"""Pydantic error types that mean "over a limit" (answered 413, not 400)."""


def status_for(exc: errors.EngineError) -> int:
    """The HTTP status of an engine error (500 for the ones that are the server's fault)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(error: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": error, "message": message, **extra}


def error_class(name: str | None) -> type[errors.EngineError]:
    """The engine error class a body names (EngineError for a name it does not know)."""
    cls = getattr(errors, name or "", None)
    if isinstance(cls, type) and issubclass(cls, errors.EngineError):
        return cls
    return errors.EngineError


def _validation_message(problems: list[dict[str, Any]]) -> str:
    parts = []
    for problem in problems[:5]:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "; ".join(parts) + more + ". See /docs for the request shapes."


def _missing_user(problem: dict[str, Any]) -> bool:
    loc = tuple(problem.get("loc") or ())
    return problem.get("type") == "missing" and loc[-1:] == ("user_id",)


def install_error_handlers(app: FastAPI) -> None:
    """Answer engine errors, validation errors and HTTP errors with the JSON error body."""
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def on_engine_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, errors.EngineError)
        status = status_for(exc)
        if status == 500:
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(error_body(type(exc).__name__, str(exc)), status_code=status,
                            headers=headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = [dict(p) for p in exc.errors()]
        too_large = any(p.get("type") in TOO_LARGE for p in problems)
        for problem in problems:
            problem.pop("input", None)  # may be megabytes, and is the caller's own
            problem.pop("ctx", None)
        message = _validation_message(problems)
        name = "TooLargeError" if too_large else "InvalidInputError"
        if not too_large and any(_missing_user(p) for p in problems):
            name = "ScopeRequiredError"
            message = ("user_id is required: every request, fact and message ids included, "
                       "is answered within one user (send user_id=NAME in the query or "
                       "\"user_id\" in the JSON body; MemoryClient methods take user_id=...). "
                       f"{message}")
        body = error_body(name, message, detail=jsonable_encoder(problems))
        return JSONResponse(body, status_code=413 if too_large else 400)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        name = {401: "AuthenticationError", 404: "ServerError", 405: "ServerError",
                413: "TooLargeError"}.get(
            exc.status_code, "InvalidInputError" if exc.status_code < 500 else "ServerError")
        return JSONResponse(error_body(name, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(
            error_body("ServerError", f"the server failed: {type(exc).__name__}: {exc}. "
                       "This is a bug; the server log has the traceback."),
            status_code=500,
        )

    app.add_exception_handler(errors.EngineError, on_engine_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
