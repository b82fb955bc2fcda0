"""The Cloud API dialect: what a business uses today, on graph.facebook.com.

Paths `/{version}/{phone_number_id}/messages` and `/media` (multipart), the Graph error envelope,
and the error codes that mean "slow down" (whole number, or one recipient) as opposed to "this
message cannot go". Facts and sources: docs/whatsapp-api.md#dialects, #cloud-api-errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from runner.errors import Problem, Problems
from runner.transport import Upload, public_url
from runner.untrusted import printable_or_none

from .base import TEMPLATE_HINT, ApiFailure, Verdict, first, media_objects, template_key

if TYPE_CHECKING:
    from runner.loader import LoadedFlow
    from runner.media import LocalMedia
    from runner.transport import Transport

BASE_URL = "https://graph.facebook.com"
VERSION = "v26.0"  # July 2026 (docs/whatsapp-api.md#graph-api-versions): pin yours in the flow
RATE = 80.0  # messages/s per phone number by default; 130429 above it
# One message every 6 seconds to one user: Meta's documented pair rate (bursts are allowed but
# borrow from later, so a flow that paces its steps never meets 131056).
PAIR_INTERVAL = 6.0
# Media ids expire after 30 days; one day of margin so that a long run never meets the end.
MEDIA_TTL = timedelta(days=29)

THROTTLE_CODES = frozenset({4, 80007, 130429})  # call rate limits, throughput
PAIR_RATE_CODE = 131056
# unknown, unavailable, "something went wrong", maintenance (during a throughput upgrade)
RETRY_CODES = frozenset({1, 2, 131000, 131016, 131057})
AUTH_CODES = frozenset({190})  # expired or invalid access token
MEDIA_CODE = 131053  # the media could not be used: for our own upload, the id expired
# "This recipient has chosen to stop receiving marketing messages on WhatsApp from your
# business" (docs/whatsapp-api.md#cloud-api-errors)
MARKETING_STOPPED_CODE = 131050
WINDOW_CODE = 131047  # "Re-engagement message": outside the customer service window
SPAM_LIMIT_CODE = 131048  # too many of the number's messages were blocked or reported
# Refusals --retry-failed must not simply repeat: Meta's per-user marketing limit is not lifted
# for a day; a number in one of Meta's experiments never takes the message
# (docs/whatsapp-api.md#cloud-api-errors).
RESEND_WAIT = {131049: timedelta(hours=24), 130472: timedelta.max}
# The template cannot be used as sent: parameters that do not match it, missing in that
# language, paused, disabled (docs/whatsapp-api.md#cloud-api-errors)
TEMPLATE_CODES = (132000, 132001, 132015, 132016)
# Marketing templates may not go through /messages for this account (the Marketing Messages API
# must carry them): the same for every recipient of the step, so it stops the step once, as an
# unusable template does (docs/whatsapp-api.md#marketing-messages-api; the code is unconfirmed)
MARKETING_DISABLED_CODE = 131063
# Refusals a code alone explains (once the status said nothing more urgent)
_BY_CODE = {
    SPAM_LIMIT_CODE: Verdict.SPAM_LIMIT,
    MEDIA_CODE: Verdict.MEDIA_GONE,
    MARKETING_STOPPED_CODE: Verdict.MARKETING_STOPPED,
    WINDOW_CODE: Verdict.WINDOW_CLOSED,
    **dict.fromkeys((*TEMPLATE_CODES, MARKETING_DISABLED_CODE), Verdict.TEMPLATE_UNUSABLE),
}
HINTS = {
    131047: TEMPLATE_HINT,
    131048: "spam rate limit: too many of this number's messages were blocked or reported;"
    " sending more now will not help (check the number's quality rating)",
    131026: "the recipient cannot receive it (not on WhatsApp, or an old app)",
    132000: "the number of template parameters does not match the template",
    132001: "no such template in this language: check name and language in WhatsApp Manager",
    131049: "Meta's per-user marketing limit: this customer got enough marketing messages for"
    " now; flowrun tries again no sooner than 24 hours later",
    130472: "the number is part of one of Meta's experiments: the API will not take it",
    132015: "the template is paused (its quality fell): edit it in WhatsApp Manager",
    132016: "the template is disabled: make a new one in WhatsApp Manager",
    MARKETING_DISABLED_CODE: "this account may not send marketing templates through the Cloud"
    " API's /messages: set api.marketing_messages: true to send MARKETING templates through"
    " the Marketing Messages API (docs/whatsapp-api.md#marketing-messages-api)",
}


@dataclass(frozen=True)
class Cloud:
    """The Cloud API for one business phone number."""

    base_url: str
    version: str
    phone_number_id: str
    # (name, language) of the templates sent through the Marketing Messages API: the lock's
    # MARKETING ones when the flow says api.marketing_messages (runner/marketing.py)
    marketing: frozenset[tuple[str, str]] = frozenset()

    name = "cloud"
    label = "Cloud API"
    credentials_from = "api.token"
    media_ttl = MEDIA_TTL
    default_rate = RATE
    default_interval = PAIR_INTERVAL

    @property
    def messages_path(self) -> str:
        return f"/{self.version}/{self.phone_number_id}/messages"

    @property
    def marketing_path(self) -> str:
        """The Marketing Messages API: marketing templates only, same body as /messages."""
        return f"/{self.version}/{self.phone_number_id}/marketing_messages"

    def path_for(self, kind: str, content: dict[str, Any]) -> str:
        if kind == "template" and self.marketing and template_key(content) in self.marketing:
            return self.marketing_path
        return self.messages_path

    @property
    def media_path(self) -> str:
        return f"/{self.version}/{self.phone_number_id}/media"

    @property
    def business(self) -> str:
        return self.phone_number_id

    @property
    def upload_key(self) -> str:
        # Media ids belong to a phone number; the Graph version does not matter.
        return f"cloud:{public_url(self.base_url)}/{self.phone_number_id}"

    def resend_wait(self, code: int | None) -> timedelta | None:
        return RESEND_WAIT.get(code) if code is not None else None

    def window_closed(self, code: int | None) -> bool:
        return code == WINDOW_CODE

    def message_body(self, to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": kind,
            kind: content,
        }

    def upload(self, media: LocalMedia, data: bytes) -> Upload:
        form = {"messaging_product": "whatsapp", "type": media.mime}
        return Upload(self.media_path, data, media.mime, form, media.path.name)

    def failure(self, status: int, data: Any) -> ApiFailure:
        """Read `{"error": {message, code, error_subcode, error_data: {details}, ...}}`."""
        error = first(data, "error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        details = first(error, "error_data", "details")
        return ApiFailure(
            status,
            code,
            printable_or_none(error.get("message")),
            printable_or_none(details),
            _classify(status, code),
            HINTS.get(code) if code is not None else None,
        )

    def message_id(self, data: Any) -> str | None:
        return printable_or_none(first(data, "messages", 0, "id"))

    def media_id(self, data: Any) -> str | None:
        found = first(data, "id")
        return None if found is None else str(found)

    async def login(self, transport: Transport) -> str | None:
        return None  # Cloud tokens are issued in Meta's Business Manager, not by the API


def _classify(status: int, code: int | None) -> Verdict:
    if status == 401 or code in AUTH_CODES:
        return Verdict.AUTH
    if code == PAIR_RATE_CODE:
        return Verdict.PAIR_RATE
    if status == 429 or code in THROTTLE_CODES:
        return Verdict.THROTTLED
    if status >= 500 or code in RETRY_CODES:
        return Verdict.RETRY
    return _BY_CODE.get(code, Verdict.FAIL) if code is not None else Verdict.FAIL


def check_flow(loaded: LoadedFlow, problems: Problems) -> None:
    """What the Cloud API refuses in a flow: a `provider` on a link (it fetches links itself,
    without credentials: docs/whatsapp-api.md#message-bodies)."""
    for media, where in media_objects(loaded):
        if media.provider is not None:
            problems.add(
                Problem(
                    loaded.locate((*where, "provider"), key=True),
                    "provider is only for the On-Premises API",
                    "on the Cloud API a link must be fetchable by WhatsApp without"
                    " credentials; or use file: to upload it",
                )
            )
