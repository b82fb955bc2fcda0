"""The On-Premises WhatsApp Business API dialect: request shapes under /v1.

What Meta's On-Premises pages describe; Meta ended it on 2025-10-23, some providers still serve it.
Shapes: docs/whatsapp-api.md#dialects and #message-bodies
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from runner import models
from runner.errors import Problem, Problems
from runner.transport import MaybeDelivered, NotDelivered, Upload, public_url
from runner.untrusted import printable_or_none

from .base import TEMPLATE_HINT, ApiFailure, LoginFailed, Verdict, first

if TYPE_CHECKING:
    from runner.loader import LoadedFlow
    from runner.media import LocalMedia
    from runner.transport import Transport

MESSAGES_PATH = "/v1/messages"
MEDIA_PATH = "/v1/media"
LOGIN_PATH = "/v1/users/login"
RATE = 250.0  # messages/s: the documented ceiling (docs/whatsapp-api.md#rate-limits)

# Codes (docs/whatsapp-api.md#on-premises-errors): not ready, internal, overloaded, not primary,
# "message not valid: resend" are worth another try; 1015 "too many requests" is throttling.
RETRY_CODES = frozenset({1011, 1014, 1016, 1017, 1018, 408})
THROTTLE_CODES = frozenset({1015})
OUTSIDE_WINDOW = 470
TEMPLATE_CODES = (2000, 2001)  # parameters do not match; missing in that language
MEDIA_NOT_FOUND = 1006
# Refusals a code alone explains (once the status said nothing more urgent)
_BY_CODE = {
    MEDIA_NOT_FOUND: Verdict.MEDIA_GONE,
    **dict.fromkeys(TEMPLATE_CODES, Verdict.TEMPLATE_UNUSABLE),
}


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class OnPrem:
    """The /v1 dialect for one API server."""

    base_url: str
    credentials: Credentials | None = None  # with `login:`; else the flow's token is used
    template_namespace: str | None = None

    name = "onprem"
    label = "On-Premises API"
    messages_path = MESSAGES_PATH
    media_path = MEDIA_PATH
    media_ttl = None  # ids name files on the API's own media volume
    business = ""  # its webhooks name no business number: the API is one
    default_rate = RATE
    default_interval = 0.0  # no documented per-recipient limit

    def path_for(self, kind: str, content: dict[str, Any]) -> str:
        return MESSAGES_PATH  # one path for every message: /v1 has no Marketing Messages API

    @property
    def credentials_from(self) -> str:
        return "api.token" if self.credentials is None else "api.login"

    @property
    def upload_key(self) -> str:
        return public_url(self.base_url)

    def resend_wait(self, code: int | None) -> timedelta | None:
        return None  # no refusal of this API is known to last

    def window_closed(self, code: int | None) -> bool:
        return code == OUTSIDE_WINDOW

    def message_body(self, to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
        if kind == "template":
            language = {"policy": "deterministic", **content["language"]}
            content = {"namespace": self.template_namespace, **content, "language": language}
        return {"recipient_type": "individual", "to": to, "type": kind, kind: content}

    def upload(self, media: LocalMedia, data: bytes) -> Upload:
        return Upload(MEDIA_PATH, data, media.mime)

    def failure(self, status: int, data: Any) -> ApiFailure:
        """Read `{"errors": [{code, title, details}]}` (or what there is of it)."""
        error = first(data, "errors", 0)
        error = error if isinstance(error, dict) else {}
        code = error.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else None
        verdict, hint = _classify(status, code)
        return ApiFailure(
            status,
            code,
            printable_or_none(error.get("title")),
            printable_or_none(error.get("details")),
            verdict,
            hint,
        )

    def message_id(self, data: Any) -> str | None:
        return printable_or_none(first(data, "messages", 0, "id"))

    def media_id(self, data: Any) -> str | None:
        found = first(data, "media", 0, "id")
        return None if found is None else str(found)

    async def login(self, transport: Transport) -> str | None:
        """`POST /v1/users/login` with HTTP Basic: the token for everything else."""
        if self.credentials is None:
            return None
        pair = f"{self.credentials.username}:{self.credentials.password}".encode()
        basic = "Basic " + base64.b64encode(pair).decode()
        try:
            response = await transport.post(LOGIN_PATH, headers={"Authorization": basic})
        except (NotDelivered, MaybeDelivered) as exc:
            raise LoginFailed(f"cannot log in: {exc}") from None
        token = first(response.data, "users", 0, "token")
        if response.status >= 300 or not isinstance(token, str) or not token:
            raise LoginFailed(
                f"the API refused the login ({self.failure(response.status, response.data)})"
            )
        return token


def _classify(status: int, code: int | None) -> tuple[Verdict, str | None]:
    if status == 401:
        return Verdict.AUTH, None
    if status == 429 or code in THROTTLE_CODES:
        return Verdict.THROTTLED, None
    if status >= 500 or code in RETRY_CODES:
        return Verdict.RETRY, None
    if code == OUTSIDE_WINDOW:
        return Verdict.WINDOW_CLOSED, TEMPLATE_HINT
    return _BY_CODE.get(code, Verdict.FAIL) if code is not None else Verdict.FAIL, None


def check_flow(loaded: LoadedFlow, problems: Problems) -> None:
    """What the On-Premises API needs of a flow: a template namespace for template steps."""
    api = loaded.flow.api
    if not isinstance(api, models.OnPremApi) or api.template_namespace is not None:
        return
    for index, step in enumerate(loaded.flow.messages):
        if isinstance(step.content, models.Template):
            problems.add(
                Problem(
                    loaded.locate(("messages", index, step.kind), key=True),
                    "template messages on the On-Premises API need api.template_namespace",
                    "your business's template namespace, shown in WhatsApp Manager",
                )
            )
