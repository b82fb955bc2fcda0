"""The On-Premises WhatsApp Business API dialect: request shapes under /v1.

Kept apart from the plan so that a second dialect (the Cloud API) adds a module, not `if`s.
Shapes: ../shared/whatsapp-api.md and https://developers.facebook.com/docs/whatsapp/api/messages
"""

from __future__ import annotations

from typing import Any

MESSAGES_PATH = "/v1/messages"
MEDIA_PATH = "/v1/media"


def message_body(to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    """The JSON body of `POST /v1/messages` for one message."""
    return {"recipient_type": "individual", "to": to, "type": kind, kind: content}
