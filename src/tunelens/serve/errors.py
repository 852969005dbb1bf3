"""Every error a client sees: OpenAI's JSON shape, the right status, never a traceback.

OpenAI clients read ``{"error": {"message", "type", "param", "code"}}`` and raise a typed
exception from the status (401 AuthenticationError, 404 NotFoundError, 413, 422
UnprocessableEntityError, 429 RateLimitError, ...), so the shape is kept exactly. A bug inside
the server is logged with its traceback on the server side and answered with a bare 500.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("tunelens.serve")

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "request_too_large", 422: "invalid_request_error",
         429: "rate_limit_error", 503: "server_unavailable", 504: "timeout_error"}


class ApiError(Exception):
    """An error answered to the client as it is (status, one-line message)."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error"), "param": param,
                      "code": code}}


def respond(status: int, message: str, code: str | None = None, param: str | None = None,
            headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status, headers=headers)


class BodyLimit:
    """413 with the JSON body above for a request body over ``limit`` bytes.

    Starlette's own limiter answers in plain text. A declared ``Content-Length`` over the limit is
    refused before anything is read; a chunked body is counted as it arrives, and the route's
    body reading raises an ``HTTPException`` that the handlers below answer.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _too_large()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413)
            return message

        await self.app(scope, counted, send)


def _too_large() -> JSONResponse:
    return respond(413, "the request body is larger than this server accepts", "body_too_large")


def install(app: FastAPI) -> None:
    """Register the handlers that give every failure the JSON shape above."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError):
        return respond(exc.status, exc.message, exc.code, exc.param, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid" or tuple(first.get("loc", ())) == ("body",):
            return respond(400, "the request body must be a JSON object (Content-Type: "
                           "application/json)", "invalid_json")
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return respond(422, f"{where or 'body'}: {first.get('msg', 'invalid request')}",
                       "invalid_value", where)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException):
        if exc.status_code == 413:
            return _too_large()
        message = {404: "no such endpoint", 405: "method not allowed"}.get(exc.status_code,
                                                                         str(exc.detail))
        return respond(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return respond(500, "internal server error (logged on the server)")
