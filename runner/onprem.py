"""The On-Premises WhatsApp Business API dialect: request shapes under /v1.

Kept apart from the plan so that a second dialect (the Cloud API) adds a module, not `if`s.
Shapes: ../shared/whatsapp-api.md and https://developers.facebook.com/docs/whatsapp/api/messages
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MESSAGES_PATH = "/v1/messages"
MEDIA_PATH = "/v1/media"


def message_body(to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of `POST /v1/messages` for one message."""
    return {"recipient_type": "individual", "to": to, "type": kind, kind: content}


# Error codes worth another try (../shared/whatsapp-api.md): not ready, internal, too many
# requests, overloaded, not primary, "message not valid: resend".
RETRY_CODES = frozenset({1011, 1014, 1015, 1016, 1017, 1018, 408})


@dataclass(frozen=True, slots=True)
class ApiFailure:
    """The API's own account of a failure, as the ledger stores it."""

    http_status: int
    code: int | None
    title: str | None
    details: str | None

    @property
    def retry(self) -> bool:
        return self.http_status == 429 or self.http_status >= 500 or self.code in RETRY_CODES

    @property
    def auth(self) -> bool:
        return self.http_status == 401

    def __str__(self) -> str:
        parts = [f"HTTP {self.http_status}"]
        if self.code is not None:
            parts.append(f"error {self.code}")
        if self.title:
            parts.append(self.title)
        text = ", ".join(parts)
        return f"{text}: {self.details}" if self.details else text


def failure(status: int, data: Any) -> ApiFailure:
    """Read the `{"errors": [{code, title, details}]}` envelope (or what there is of it)."""
    first: dict[str, Any] = {}
    if isinstance(data, dict) and isinstance(data.get("errors"), list) and data["errors"]:
        candidate = data["errors"][0]
        first = candidate if isinstance(candidate, dict) else {}
    code = first.get("code")
    return ApiFailure(
        status,
        code if isinstance(code, int) else None,
        str(first["title"]) if "title" in first else None,
        str(first["details"]) if "details" in first else None,
    )


def message_id(data: Any) -> str | None:
    """`messages[0].id` of a send's answer."""
    try:
        return str(data["messages"][0]["id"])
    except (KeyError, IndexError, TypeError):
        return None


def media_id(data: Any) -> str | None:
    """`media[0].id` of an upload's answer."""
    try:
        return str(data["media"][0]["id"])
    except (KeyError, IndexError, TypeError):
        return None
