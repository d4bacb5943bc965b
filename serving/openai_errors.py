"""Errors in the OpenAI API's shape, so that the official clients raise their usual exceptions.

Every error the gateway answers is ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status the OpenAI API uses for that kind of failure.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from goodput.serving.auth import AccessDenied


class OpenAIError(Exception):
    """A failure to answer with an OpenAI-format error body and the given HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse_event(self) -> bytes:
        """The error as one server-sent event: how a stream that already started reports it."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def error_body(
    message: str, type_: str, *, param: str | None = None, code: str | int | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param=param, code=code)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist.",
        "invalid_request_error",
        param="model",
        code="model_not_found",
    )


def rate_limited(message: str, *, reason: str, retry_after_s: float) -> OpenAIError:
    """429 with ``Retry-After`` (whole seconds, at least 1), as clients back off on it."""
    seconds = max(1, int(retry_after_s + 0.999))
    return OpenAIError(
        429,
        message,
        "rate_limit_exceeded",
        code=reason,
        headers={"Retry-After": str(seconds)},
    )


def draining() -> OpenAIError:
    return OpenAIError(
        503,
        "The server is shutting down and accepts no new requests; retry on another replica.",
        "service_unavailable",
        code="draining",
        headers={"Retry-After": "1"},
    )


def engine_unavailable(detail: str) -> OpenAIError:
    return OpenAIError(
        503,
        f"The inference engine is unavailable: {detail}",
        "server_error",
        code="engine_unavailable",
    )


def adapter_unavailable(adapter: str, detail: str) -> OpenAIError:
    """The engine would not load the adapter a request names (a bad path, a rank above the
    engine's maximum, an engine gone): 503, for another replica or a later retry."""
    return OpenAIError(
        503,
        f"Adapter {adapter!r} could not be loaded: {detail}",
        "server_error",
        code="adapter_unavailable",
        headers={"Retry-After": "1"},
    )


def access_denied(denied: AccessDenied) -> OpenAIError:
    """401/403 as the OpenAI API answers them; 429 for a quota, with ``Retry-After``."""
    if denied.status == 429:
        return rate_limited(
            denied.message, reason=denied.code, retry_after_s=denied.retry_after_s or 1.0
        )
    type_ = "invalid_request_error" if denied.status == 401 else "permission_denied"
    return OpenAIError(denied.status, denied.message, type_, code=denied.code)


def internal_error() -> OpenAIError:
    return OpenAIError(
        500,
        "The server had an error processing the request.",
        "server_error",
        code="internal_error",
    )


def engine_failed(detail: str) -> OpenAIError:
    return OpenAIError(
        502, f"The inference engine failed: {detail}", "server_error", code="engine_error"
    )


def normalize_engine_error(status: int, payload: bytes) -> dict[str, Any]:
    """Bring an engine's error body into the OpenAI shape.

    Some vLLM versions answer the flat ``{"object": "error", "message": ...}``; others the nested
    form; a crashed server may answer plain text. The client always gets the nested form.
    """
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        inner = parsed.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return {
                "error": {
                    "message": str(inner.get("message")),
                    "type": inner.get("type") or _type_for(status),
                    "param": inner.get("param"),
                    "code": inner.get("code"),
                }
            }
        if "message" in parsed:
            return error_body(
                str(parsed["message"]),
                str(parsed.get("type") or _type_for(status)),
                param=parsed.get("param"),
                code=parsed.get("code"),
            )
        if "detail" in parsed:
            return error_body(str(parsed["detail"]), _type_for(status))
    text = payload.decode(errors="replace").strip() or f"HTTP {status}"
    return error_body(text[:1000], _type_for(status))


def _type_for(status: int) -> str:
    if status == 404:
        return "invalid_request_error"
    if 400 <= status < 500:
        return "invalid_request_error"
    return "server_error"
