"""Service errors: codes and messages of the HTTP layer, and the one error body every response uses.

Library errors keep their own codes (``hugie.errors``, returned as 422); these cover what only
the service can go wrong with: limits, overload, timeouts, auth, readiness.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from hugie.errors import MESSAGES as API_MESSAGES  # one catalogue: service codes live there too


class ApiError(Exception):
    """An HTTP error with a code from :data:`API_MESSAGES`; optional extra response headers."""

    def __init__(self, status: int, code: str, headers: dict[str, str] | None = None, **details):
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.details = details
        self.message = API_MESSAGES[code].format(**details)
        super().__init__(f"[{code}] {self.message}")


def error_response(status: int, code: str, message: str, request_id: str | None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "request_id": request_id}},
                        status_code=status, headers=headers)
