"""The sandbox's side of marketing templates: the Marketing Messages API
(`POST /{version}/{PHONE_NUMBER_ID}/marketing_messages`, the same body and checks as
/messages, marketing templates only) and an account whose marketing templates the Cloud API's
/messages refuses with 131063, when a test asks for one (`POST /sandbox/marketing
{"cloud_api_disabled": true}`). Facts and what is unconfirmed:
docs/whatsapp-api.md#marketing-messages-api.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .checks import ApiError

MARKETING = "MARKETING"
CLOUD_API_DISABLED = 131063
DISABLED_TITLE = "Marketing messages are disabled on Cloud API"  # the sandbox's words
DISABLED_DETAILS = (
    "Marketing template messages cannot be sent through Cloud API for this WhatsApp Business"
    " Account; send them through the Marketing Messages API (marketing_messages)"
)


class DisabledOnCloudApi(ApiError):
    """131063, with its own title (the shared table has none for it)."""

    def __init__(self) -> None:
        super().__init__("invalid", DISABLED_DETAILS, code=CLOUD_API_DISABLED)

    @property
    def title(self) -> str:
        return DISABLED_TITLE


def categories(catalog: Iterable[dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(name, language) → the template's category, as the account files it."""
    return {(t["name"], t["language"]): str(t.get("category", "")).upper() for t in catalog}


@dataclass
class Marketing:
    """What the account says about marketing templates, and what the MM API accepted."""

    cloud_api_disabled: bool = False  # /messages refuses MARKETING templates (131063)
    sent: list[str] = field(default_factory=list)  # ids of messages sent through the MM API

    def check(
        self, body: dict[str, Any], kinds: dict[tuple[str, str], str], *, marketing_api: bool
    ) -> None:
        """Refuse what the path does not take: the MM API takes only MARKETING templates; with
        `cloud_api_disabled`, /messages takes none of them."""
        category = _category(body, kinds)
        if marketing_api and category != MARKETING:
            raise ApiError(
                "invalid",
                "the Marketing Messages API sends marketing templates only (type template, of"
                f" category MARKETING); this is {category or body.get('type')!r}",
            )
        if not marketing_api and self.cloud_api_disabled and category == MARKETING:
            raise DisabledOnCloudApi()

    def said(self) -> dict[str, Any]:
        return {"cloud_api_disabled": self.cloud_api_disabled, "sent": self.sent}


def _category(body: dict[str, Any], kinds: dict[tuple[str, str], str]) -> str | None:
    """The category of the template a (checked) body sends; None for anything else."""
    if body.get("type") != "template":
        return None
    template = body["template"]
    return kinds.get((template["name"], template["language"]["code"]))
