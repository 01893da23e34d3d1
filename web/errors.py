"""Error pages for people and ``{"error": message}`` for the API; never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException, InternalServerError

from kvmvps.errors import KvmvpsError
from web.common import status_for

log = logging.getLogger(__name__)

API_PREFIX = "/api/"


def wants_json() -> bool:
    """API paths always answer JSON."""
    return request.path.startswith(API_PREFIX)


def json_error(message: str, status: int, **extra: object) -> tuple[Response, int]:
    return jsonify({"error": message, **extra}), status


def page_error(message: str, status: int, title: str) -> tuple[str, int]:
    return render_template("error.html", message=message, status=status, title=title), status


def _http(exc: HTTPException) -> Response | tuple[Response | str, int]:
    status = exc.code or 500
    message = exc.description or exc.name
    if status == 429:
        return _with_headers(exc, _http_body(message, status, exc))
    return _http_body(message, status, exc)


def _with_headers(exc: HTTPException, result: tuple[Response | str, int]) -> Response:
    """The error response with the exception's Retry-After header kept."""
    response = make_response(result)
    for name, value in exc.get_headers():
        if name.lower() == "retry-after":
            response.headers[name] = value
    return response


def _http_body(message: str, status: int, exc: HTTPException) -> tuple[Response | str, int]:
    if wants_json():
        response, code = json_error(message, status)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="kvmvps"'
        if status == 405 and exc.response is None:
            allowed = getattr(exc, "valid_methods", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        return response, code
    return page_error(message, status, exc.name)


def _service(exc: KvmvpsError) -> tuple[Response | str, int]:
    status = status_for(exc)
    if wants_json():
        return json_error(str(exc), status)
    return page_error(str(exc), status, "Something went wrong" if status >= 500 else "Sorry")


def _unexpected(exc: Exception) -> tuple[Response | str, int] | Response:
    if isinstance(exc, HTTPException):
        return _http(exc)
    log.exception("unhandled error in %s %s", request.method, request.path)
    message = "internal error; the operators have been told"
    if wants_json():
        return json_error(message, 500)
    return page_error(message, 500, InternalServerError().name)


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http)
    app.register_error_handler(KvmvpsError, _service)
    app.register_error_handler(Exception, _unexpected)
