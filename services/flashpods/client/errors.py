"""The one exception the laptop side raises.

It carries the API's error code and HTTP status when the API answered, and a client
code (status None) when it did not: network_error, upload_failed, upload_disk_full,
upload_too_large, invalid_artifact_path, missing_token, invalid_config, invalid_response, ...
"""

from __future__ import annotations

from typing import Any


class FlashpodsError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.details = details or {}
        self.request_id = request_id
        # Set by the SDK when the request was re-sent after a network error: an
        # earlier send may then have taken effect (finalize, kill use this).
        self.after_network_retry = False

    def __str__(self) -> str:
        prefix = f"{self.status} " if self.status is not None else ""
        return f"{prefix}{self.code}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        """The API's error shape, plus the status and request id the client saw."""
        out: dict[str, Any] = {"error": self.code, "message": self.message, "status": self.status}
        if self.details:
            out["details"] = self.details
        if self.request_id:
            out["request_id"] = self.request_id
        return out
