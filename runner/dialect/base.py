"""What every API dialect is (On-Premises `/v1`, or the Cloud API): the protocol, and the
verdicts it gives on failures.

Everything that differs between the two (paths, body shapes, uploads, error envelopes, what an
error code means, limits, logging in) lives behind `Dialect`; the executor asks it questions
and acts on the answers, so a third dialect is a module, not `if`s across the executor.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from runner import models
from runner.transport import Upload

if TYPE_CHECKING:
    from runner.loader import LoadedFlow
    from runner.media import LocalMedia
    from runner.transport import Transport
    from runner.yamldoc import YamlPath


# Both dialects refuse a free-form message outside the 24-hour window (Cloud 131047, On-Premises
# 470): docs/whatsapp-api.md#customer-service-window
TEMPLATE_HINT = (
    "the customer has not written in the last 24 hours: only a template message (a"
    " `template:` step) may reach them now; the step waits until they write back (a"
    " template does not open the window)"
)


class Verdict(enum.Enum):
    """What the executor does about a failed request."""

    RETRY = "retry"  # transient: back off and try again
    THROTTLED = "throttled"  # the number's throughput: slow the whole run, then try again
    SPAM_LIMIT = "spam limit"  # the number's messages were blocked or reported: everyone
    # pauses and slows down; if it goes on, the run stops
    PAIR_RATE = "pair rate"  # too many to this one recipient: delay only them, then again
    AUTH = "auth"  # the token is refused: log in again if the dialect can, else stop
    MEDIA_GONE = "media gone"  # a media id expired: upload again (once), then try again
    TEMPLATE_UNUSABLE = "template unusable"  # missing, paused, disabled, wrong parameters: the
    # same for every recipient of the step (in that language): the step stops, once
    WINDOW_CLOSED = "window closed"  # free-form outside the customer service window: the
    # step waits until the customer writes (docs/whatsapp-api.md#customer-service-window)
    MARKETING_STOPPED = "marketing stopped"  # the customer stopped marketing: never retried,
    # recorded, and no template goes to them until they resume
    FAIL = "fail"  # settled: the message failed, with the API's reason


@dataclass(frozen=True, slots=True)
class ApiFailure:
    """The API's own account of a failure, as the ledger stores it, and what to do about it."""

    http_status: int
    code: int | None
    title: str | None
    details: str | None
    verdict: Verdict = Verdict.FAIL
    hint: str | None = field(default=None, compare=False)  # shown to people, not stored
    retry_after: float | None = field(default=None, compare=False)  # seconds, from the API

    @property
    def retry(self) -> bool:
        return self.verdict in (
            Verdict.RETRY,
            Verdict.THROTTLED,
            Verdict.SPAM_LIMIT,
            Verdict.PAIR_RATE,
        )

    def __str__(self) -> str:
        parts = [f"HTTP {self.http_status}"] if self.http_status else []
        if self.code is not None:
            parts.append(f"error {self.code}")
        if self.title:
            parts.append(self.title)
        text = ", ".join(parts)
        return f"{text}: {self.details}" if self.details else text


class Dialect(Protocol):
    """What flowrun needs to know about one API dialect."""

    @property
    def name(self) -> str:
        """ "cloud" or "onprem", as flows write it."""

    @property
    def label(self) -> str:
        """For people: "Cloud API"."""

    @property
    def credentials_from(self) -> str:
        """Where the flow gives the credentials, for messages: "api.token" or "api.login"."""

    @property
    def messages_path(self) -> str: ...

    def path_for(self, kind: str, content: dict[str, Any]) -> str:
        """Where a message of this kind (`content`: the object under `kind`) is POSTed: the
        messages path, or on Cloud the Marketing Messages API's for a MARKETING template when
        the flow asks for it (docs/whatsapp-api.md#marketing-messages-api)."""
        ...

    @property
    def media_path(self) -> str: ...

    @property
    def business(self) -> str:
        """The business number as webhooks name it (Cloud: the phone number id; On-Premises,
        whose webhooks name none: ""): whose customers' messages apply to this run."""

    @property
    def upload_key(self) -> str:
        """Uploads are cached per this key: the API, and on Cloud the phone number."""

    @property
    def media_ttl(self) -> timedelta | None:
        """A cached media id older than this is uploaded again; None: ids do not expire."""

    @property
    def default_rate(self) -> float | None:
        """Messages/s: the API's documented limit, used when the flow sets none."""

    @property
    def default_interval(self) -> float:
        """Seconds between one recipient's messages when the flow sets none."""

    def resend_wait(self, code: int | None) -> timedelta | None:
        """How long after a refusal with this code the message may be tried again (with
        --retry-failed); None: at once; `timedelta.max`: never (the API will not take it)."""
        ...

    def window_closed(self, code: int | None) -> bool:
        """Whether this error code (of a refusal, or of a `failed` delivery status) means the
        customer service window was closed (Cloud 131047, On-Premises 470)."""
        ...

    def message_body(self, to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
        """The JSON body that sends `content` (the object under `kind`) to `to`."""
        ...

    def upload(self, media: LocalMedia, data: bytes) -> Upload: ...

    def failure(self, status: int, data: Any) -> ApiFailure:
        """Read the dialect's error envelope and classify it."""
        ...

    def message_id(self, data: Any) -> str | None: ...

    def media_id(self, data: Any) -> str | None: ...

    async def login(self, transport: Transport) -> str | None:
        """A fresh token, for dialects that log in (On-Premises with `login:`); None when the
        flow gives its token directly. Raises `LoginFailed` when the API refuses."""
        ...


class LoginFailed(Exception):
    """The API refused the flow's username and password, or could not be reached to log in."""


def template_key(content: dict[str, Any]) -> tuple[str, str]:
    """(name, language code) of a rendered `template` object, as the lock keys templates."""
    language = content.get("language")
    code = language.get("code") if isinstance(language, dict) else None
    return str(content.get("name")), str(code)


def first(data: Any, *keys: str | int) -> Any:
    """`data[k1][k2]...`, or None where the shape is not what the API documents."""
    for key in keys:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def media_objects(loaded: LoadedFlow) -> Iterator[tuple[models._Media, YamlPath]]:
    """Every media object of the flow's steps (their own, or a template's header), with
    where it is written: what per-dialect rules look at."""
    for index, step in enumerate(loaded.flow.messages):
        base: YamlPath = ("messages", index, step.kind)
        content = step.content
        if isinstance(content, models._Media):
            yield content, base
        elif isinstance(content, models.Template) and content.header is not None:
            header = getattr(content.header, content.header.kind)
            if isinstance(header, models._Media):
                yield header, (*base, "header", content.header.kind)
