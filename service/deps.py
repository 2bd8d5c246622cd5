"""The request-reading vocabulary of the routers, in one place.

Dependencies that need a long-lived object or a configured limit are built once, when the
router is built, so a request never looks anything up. Annotations here stay evaluable at
definition time (no ``from __future__ import annotations``): FastAPI reads them, and they
refer to values of the enclosing function.
"""

import hmac
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError, create_model
from starlette.datastructures import Headers

from service.schemas import DEFAULT_BODY, DEFAULT_MESSAGE, NotificationBody

__all__ = [
    "BodyReader",
    "idempotency_key",
    "token_checker",
]


def token_checker(tokens: tuple[str, ...]) -> Callable[..., Awaitable[None]]:
    """A dependency requiring ``Authorization: Bearer <one of tokens>`` (401 otherwise).

    Every configured token is compared, in constant time, whatever matches: neither the timing
    nor the number of comparisons tells which token, or how much of one, was right.
    """
    expected = [token.encode() for token in tokens]

    async def require_token(
        authorization: Annotated[
            str | None, Header(description="`Bearer <token>`, when tokens are configured.")
        ] = None,
    ) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        given = token.strip().encode()
        matches = [hmac.compare_digest(given, candidate) for candidate in expected]
        if scheme.lower() != "bearer" or not any(matches):
            problem = "missing" if authorization is None else "not a valid bearer token"
            raise HTTPException(
                status_code=401,
                detail=f"Authorization: {problem}; send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_token


_KEY_HEADER = "idempotency-key"
_KEY_MAX = 255


def idempotency_key(headers: Headers) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 printable ASCII characters, or 422."""
    key = headers.get(_KEY_HEADER)
    if key is None:
        return None
    if not 0 < len(key) <= _KEY_MAX or not (key.isascii() and key.isprintable()):
        raise RequestValidationError(
            [
                {
                    "type": "idempotency_key",
                    "loc": ("header", _KEY_HEADER),
                    "msg": f"Idempotency-Key must be 1 to {_KEY_MAX} printable ASCII characters",
                    "input": key,
                }
            ]
        )
    return key


def _json_safe(value: Any) -> Any:
    """An echoed input that JSON can carry: bytes decoded, and 1e999 or NaN (which Python's
    JSON reader accepts) as strings, since a JSON answer cannot hold them."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _sends_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return (length is not None and length != "0") or "transfer-encoding" in headers


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class BodyReader:
    """Reads the optional ``{"message": ...}`` body, and only when the request has one.

    Called by the endpoint instead of a ``Body()`` parameter: FastAPI awaits the body of every
    request and validates it through its dependency solver; most requests here send none.
    Errors are ``RequestValidationError``s located in ``body`` as FastAPI's would be, and
    clearer where FastAPI's are not: a JSON body sent without a JSON ``Content-Type`` is named
    as such, and undecodable bytes are a 422 ``json_invalid`` rather than a 400.

    ``model`` (``NotificationBody`` or a subclass) with ``fields`` added is what the body is
    validated as; with ``required`` a request without one is a 422.
    """

    def __init__(
        self,
        max_length: int,
        max_bytes: int,
        *,
        model: type[NotificationBody] = NotificationBody,
        required: bool = False,
        **fields: Any,
    ) -> None:
        self._max_bytes = max_bytes
        self._required = required
        validated = create_model(
            model.__name__,
            __base__=model,
            __doc__=model.__doc__,
            message=(str, Field(DEFAULT_MESSAGE, max_length=max_length, description="The text.")),
            **fields,
        )
        body: Any = validated if required else validated | None
        self._adapter: TypeAdapter[NotificationBody | None] = TypeAdapter(body)
        self.openapi: dict[str, Any] = {
            "requestBody": {
                "required": required,
                "content": {"application/json": {"schema": validated.model_json_schema()}},
            }
        }

    async def read(self, request: Request) -> NotificationBody:
        """The request's body: the default one when it sent none (422 when ``required``)."""
        raw = await self._read_limited(request) if _sends_body(request.headers) else b""
        body = None if not raw else self._validated(raw, request.headers.get("content-type", ""))
        if body is not None:
            return body
        if self._required:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body",), "msg": "A JSON body is required"}]
            )
        return DEFAULT_BODY

    def _validated(self, raw: bytes, content_type: str) -> NotificationBody | None:
        if not _is_json(content_type):
            raise RequestValidationError(
                [
                    {
                        "type": "content_type",
                        "loc": ("header", "content-type"),
                        "msg": "A body must be JSON, sent with Content-Type: application/json",
                        "input": content_type,
                    }
                ]
            )
        try:
            return self._adapter.validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for error in errors:
                error["loc"] = ("body", *error["loc"])
                error["input"] = _json_safe(error["input"])
            raise RequestValidationError(errors) from None

    async def _read_limited(self, request: Request) -> bytes:
        """The body, or 413 as soon as it is known to pass ``max_bytes`` (before parsing)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise self._too_large(f"{declared} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._max_bytes:
                raise self._too_large(f"more than {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, size: str) -> HTTPException:
        return HTTPException(
            status_code=413,
            detail=f"request body is {size}; the limit is {self._max_bytes} bytes",
        )
