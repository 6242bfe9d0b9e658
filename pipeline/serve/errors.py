"""The one error type a route raises: a status, one line naming the cause, and headers
(Retry-After, WWW-Authenticate). The app turns it into `{"error": "..."}`."""

from __future__ import annotations

from pipeline.errors import one_line_text


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, retry_after: int | None = None, headers: dict | None = None):
        super().__init__(one_line_text(message))
        self.status = status
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(int(retry_after))

    @property
    def message(self) -> str:
        return str(self)
