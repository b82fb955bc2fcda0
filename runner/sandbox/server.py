"""A WhatsApp Business API on loopback, in both dialects: for trying flows without an account,
and for testing flowrun over real HTTP instead of mocks.

The On-Premises API under /v1 (login, raw uploads, `{"errors": [...]}`) and the Cloud API under
/{version}/{PHONE_NUMBER_ID}/ (multipart uploads, the Graph `{"error": {...}}` envelope, `wamid.`
ids). Requests are checked as strictly as the real APIs do (checks.py); what is accepted
goes to an inbox; faults are injected on request. Shapes: docs/whatsapp-api.md#message-bodies.

Control endpoints (not part of the WhatsApp API) live under /sandbox/:
- GET /sandbox/inbox: the accepted messages, in order; DELETE clears inbox and faults, and
  forgets customers (their messages' windows, actions, refusals, the simulation); the window
  settings (enforce, window_errors, everyone_wrote) and the webhook stay
- POST /sandbox/faults: {"latency": s, "status": {"code": 429, "count": n, "retry_after": s,
  "error": 130429}, "drop": n, "slow": s,
  "fail_recipients": {"<wa id>": 1013, "<wa id>": {"error": 131056, "count": 2, "status": 400}}}
  replaces the faults: {} or no body clears them, as DELETE does; GET shows them
- POST /sandbox/media/expire: forget uploaded media (the Cloud API's 30 days, at once)
- POST /sandbox/tokens/expire: every token stops working (logging in again gives a new one);
  the answer {"token": ...} is a renewed one that works, as Meta's settings would give
- POST /sandbox/tokens/restore: `sandbox-token` works again (answers {"token": ...})
- POST /sandbox/webhook {"url", "secret", "delay", "fail_share", "seed"}: status callbacks for
  what it accepts (webhooks.py); GET: the final status it decided for each message
- POST /sandbox/window {"enforce": true, "window_errors": "async" | "sync" | "auto",
  "everyone_wrote": <unix seconds> | null}: free-form messages outside the 24-hour customer
  service window are refused (131047 / 470), as the real APIs do: ON by default.
  `everyone_wrote` declares the audience: every customer wrote at that time (open until
  then + 24 h, or later if a customer's own message says so); null: only customers' own
  messages count (the default). {"enforce": false} exists only for tests of the switch
  itself, never to make a flow pass. GET: the settings, each customer's window and the
  messages refused
- POST /sandbox/customers {"reply_share", "tap_share", "stop_share", "delay", "texts", "seed"}:
  simulated customers (customers.py); GET: what every customer did
- POST /sandbox/inbound {"from", "text" | "button" + "context" | "user_preferences", "at"}: one
  customer message now (or written at `at`), to the webhook if one is configured
- POST /sandbox/marketing {"cloud_api_disabled": true}: the Cloud API's /messages refuses
  MARKETING templates with 131063 (use the Marketing Messages API, /marketing_messages, which
  the sandbox serves with /messages' checks, marketing templates only); GET: the setting and
  the ids the Marketing Messages API accepted (marketing.py)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

from runner import clock
from runner.media import LIMITS
from runner.threadserver import serving

from .catalog import CATALOG, WABA_ID, PagingError, page
from .checks import NAMESPACE, TEMPLATES, WINDOW_DETAILS, ApiError, TemplateSpec, check_message
from .checks import specs as template_specs
from .customers import Customers, Inbound, Refused, Simulation
from .marketing import Marketing, categories
from .webhooks import Webhook

__all__ = ["LOGIN", "NAMESPACE", "PHONE_NUMBER_ID", "TOKEN", "SandboxState", "running", "serve"]

TOKEN = "sandbox-token"
LOGIN = ("sandbox", "sandbox")
PHONE_NUMBER_ID = "106540352242922"  # the one business number the sandbox's Cloud API serves
ALL_MIME = frozenset().union(*(mimes for mimes, _ in LIMITS.values()))
VERSION_PATH = r"{version:v\d+\.\d+}"
WINDOW_ERRORS = ("auto", "async", "sync")
WINDOW_FIELDS = ("enforce", "window_errors", "everyone_wrote")
FAULT_FIELDS = ("drop", "fail_recipients", "latency", "slow", "status")
STATUS_FIELDS = ("code", "count", "error", "retry_after")
log = logging.getLogger(__name__)


@dataclass
class Faults:
    latency: float = 0.0
    status_code: int = 0
    status_count: int = 0
    status_error: int | None = None  # the API error code in the envelope (default by status)
    retry_after: float | None = None
    drop: int = 0
    slow: float = 0.0
    # wa id -> [error code, times left (None: always), HTTP status]
    fail_recipients: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class SandboxState:
    inbox: list[dict[str, Any]] = field(default_factory=list)
    received: list[float] = field(default_factory=list)  # monotonic time of each inbox entry
    media: dict[str, str] = field(default_factory=dict)  # id -> MIME type
    tokens: set[str] = field(default_factory=lambda: {TOKEN})  # valid bearer tokens
    faults: Faults = field(default_factory=Faults)
    requests: int = 0
    uploads: int = 0
    logins: int = 0
    ids: Iterator[int] = field(default_factory=itertools.count)
    webhook: Webhook | None = None  # where status callbacks go, if anywhere
    # The real APIs always enforce the window; off only for tests of the switch itself.
    # Read in one place only: `_window_closed`.
    enforce_window: bool = True
    window_errors: str = "auto"  # how a closed window refuses: async, sync, auto (see README)
    refused: list[dict[str, Any]] = field(default_factory=list)  # free-form to closed windows
    customers: Customers = field(default_factory=Customers)
    # callbacks of a webhook replaced while they were under way (stopped with the server)
    leftover: set[asyncio.Task[None]] = field(default_factory=set)
    # the account's templates: listed by message_templates, sends checked against them
    catalog: list[dict[str, Any]] = field(default_factory=lambda: list(CATALOG))
    templates: dict[tuple[str, str], TemplateSpec] = field(default_factory=lambda: TEMPLATES)
    categories: dict[tuple[str, str], str] = field(default_factory=lambda: categories(CATALOG))
    marketing: Marketing = field(default_factory=Marketing)  # marketing.py

    def __post_init__(self) -> None:
        self.customers.webhook = lambda: self.webhook  # customers write to the webhook of now

    def use_templates(self, catalog: list[dict[str, Any]]) -> None:
        """The account has these templates (a flow's lock file) instead of the built-in ones:
        so `--sandbox` refuses what the account would."""
        self.catalog = list(catalog)
        self.templates = template_specs(catalog)
        self.categories = categories(catalog)


STATE = web.AppKey("state", SandboxState)


def _dialect(request: web.Request) -> str:
    return "onprem" if request.path.startswith("/v1/") else "cloud"


def _envelope(dialect: str, error: ApiError) -> dict[str, Any]:
    code = error.code_for(dialect)
    if dialect == "cloud":
        return {
            "error": {
                "message": f"({'#'}{code}) {error.title}",
                "type": "OAuthException",
                "code": code,
                "error_data": {"messaging_product": "whatsapp", "details": error.details},
                "fbtrace_id": "Sandbox" + uuid.uuid4().hex[:16],
            }
        }
    return {
        "errors": [{"code": code, "title": error.title, "details": error.details}],
        "meta": {"api_status": "stable", "version": "sandbox"},
    }


def build_app(state: SandboxState | None = None) -> web.Application:
    state = state or SandboxState()
    app = web.Application(client_max_size=101 * 1024 * 1024, middlewares=[_errors, _faults])
    app[STATE] = state
    app.router.add_post("/v1/users/login", _login)
    app.router.add_post("/v1/media", _upload)
    app.router.add_post("/v1/messages", _send)
    app.router.add_post(f"/{VERSION_PATH}/{{number}}/media", _cloud_upload)
    app.router.add_post(f"/{VERSION_PATH}/{{number}}/messages", _send)
    app.router.add_post(f"/{VERSION_PATH}/{{number}}/marketing_messages", _send_marketing)
    app.router.add_get(f"/{VERSION_PATH}/{{waba}}/message_templates", _message_templates)
    app.router.add_get("/sandbox/inbox", _inbox)
    app.router.add_delete("/sandbox/inbox", _reset)
    app.router.add_post("/sandbox/faults", _set_faults)
    app.router.add_delete("/sandbox/faults", _clear_faults)
    app.router.add_get("/sandbox/faults", _faults_now)
    app.router.add_post("/sandbox/media/expire", _expire_media)
    app.router.add_post("/sandbox/tokens/expire", _expire_tokens)
    app.router.add_post("/sandbox/tokens/restore", _restore_token)
    app.router.add_post("/sandbox/webhook", _set_webhook)
    app.router.add_get("/sandbox/webhook", _webhook_decisions)
    app.router.add_post("/sandbox/window", _set_window)
    app.router.add_get("/sandbox/window", _window)
    app.router.add_post("/sandbox/customers", _set_customers)
    app.router.add_get("/sandbox/customers", _customers)
    app.router.add_post("/sandbox/inbound", _inbound)
    app.router.add_post("/sandbox/marketing", _set_marketing)
    app.router.add_get("/sandbox/marketing", _marketing)
    app.on_cleanup.append(_stop_callbacks)
    return app


async def _stop_callbacks(app: web.Application) -> None:
    """Callbacks and customers still under way stop with the server, closing their
    connections (left to the garbage collector, their sockets would be leaked)."""
    state = app[STATE]
    tasks = {
        *state.customers.tasks,
        *state.leftover,
        *(state.webhook.tasks if state.webhook else ()),
    }
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ConnectionResetError as exc:
        # The client went away before its request was read (a run stopped, a timeout): a
        # client's business, not the sandbox's; one line for `flowrun sandbox`, no traceback.
        log.info("%s %s: the client went away (%s)", request.method, request.path, exc)
        return web.Response(status=400)  # (nobody reads it)
    except ApiError as exc:
        headers = {}
        if exc.status == 429 or exc.meaning == "throttled":
            retry_after = request.app[STATE].faults.retry_after
            if retry_after is not None:
                headers["Retry-After"] = f"{retry_after:g}"
        return web.json_response(
            _envelope(_dialect(request), exc), status=exc.status, headers=headers
        )


@web.middleware
async def _faults(request: web.Request, handler: Any) -> web.StreamResponse:
    state: SandboxState = request.app[STATE]
    if request.path.startswith("/sandbox/"):
        return await handler(request)  # type: ignore[no-any-return]
    state.requests += 1
    faults = state.faults
    if faults.latency:
        await asyncio.sleep(faults.latency)
    if faults.drop > 0:
        faults.drop -= 1
        assert request.transport is not None
        request.transport.close()  # the connection dies before any answer
        raise web.HTTPInternalServerError()
    if faults.status_count > 0:
        faults.status_count -= 1
        meaning = "throttled" if faults.status_code == 429 else "internal"
        raise ApiError(meaning, "injected fault", faults.status_code, faults.status_error)
    response = await handler(request)
    if faults.slow:  # the API did the work; only its answer is late (past the client's timeout)
        await asyncio.sleep(faults.slow)
    return response  # type: ignore[no-any-return]


def _authorize(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer ") or header[7:] not in request.app[STATE].tokens:
        raise ApiError("auth", "invalid, expired or missing access token", status=401)


def _check_number(request: web.Request) -> None:
    number = request.match_info["number"]
    if number != PHONE_NUMBER_ID:
        raise ApiError(
            "object",
            f"Object with ID '{number}' does not exist, cannot be loaded due to missing"
            " permissions, or does not support this operation",
        )


async def _login(request: web.Request) -> web.Response:
    expected = base64.b64encode(f"{LOGIN[0]}:{LOGIN[1]}".encode()).decode()
    if request.headers.get("Authorization") != f"Basic {expected}":
        raise ApiError("auth", "invalid username or password", status=401)
    state: SandboxState = request.app[STATE]
    state.logins += 1
    token = f"{TOKEN}-{state.logins}"
    state.tokens.add(token)
    return web.json_response(
        {"users": [{"token": token, "expires_after": "2099-01-01 00:00:00+00:00"}]}
    )


async def _upload(request: web.Request) -> web.Response:
    _authorize(request)
    mime = request.headers.get("Content-Type", "").split(";")[0].strip()
    body = await request.read()
    media_id = _store_media(request.app[STATE], mime, body, str(uuid.uuid4()))
    return web.json_response({"media": [{"id": media_id}]}, status=201)


async def _cloud_upload(request: web.Request) -> web.Response:
    """Multipart: messaging_product=whatsapp, type=MIME, file=the bytes."""
    _authorize(request)
    _check_number(request)
    if not request.content_type.startswith("multipart/"):
        raise ApiError("invalid", "the upload must be multipart/form-data")
    fields: dict[str, str] = {}
    content = b""
    part_mime = ""
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise ApiError("invalid", "nested multipart is not supported")
        if part.name == "file":
            content = await part.read()
            part_mime = part.headers.get("Content-Type", "")
        elif part.name:
            fields[part.name] = await part.text()
    if fields.get("messaging_product") != "whatsapp":
        raise ApiError("missing", "messaging_product must be 'whatsapp'")
    mime = fields.get("type", "")
    if part_mime and part_mime != mime:
        raise ApiError("invalid", f"type {mime!r} does not match the file's {part_mime!r}")
    state: SandboxState = request.app[STATE]
    media_id = _store_media(state, mime, content, str(10**15 + next(state.ids)))
    return web.json_response({"id": media_id})


def _store_media(state: SandboxState, mime: str, content: bytes, media_id: str) -> str:
    if mime not in ALL_MIME:
        raise ApiError("invalid", f"media type '{mime}' is not supported")
    if not content:
        raise ApiError("missing", "the upload is empty")
    largest = max(limit for mimes, limit in LIMITS.values() if mime in mimes)
    if len(content) > largest:
        raise ApiError("invalid", f"the file is {len(content):,} bytes; {mime} takes {largest:,}")
    state.media[media_id] = mime
    state.uploads += 1
    return media_id


async def _send(request: web.Request) -> web.Response:
    return await _accept(request, marketing_api=False)


async def _send_marketing(request: web.Request) -> web.Response:
    """The Marketing Messages API: /messages' body and checks, marketing templates only."""
    return await _accept(request, marketing_api=True)


async def _accept(request: web.Request, *, marketing_api: bool) -> web.Response:
    _authorize(request)
    dialect = _dialect(request)
    if dialect == "cloud":
        _check_number(request)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError("invalid", "the body is not JSON") from None
    state: SandboxState = request.app[STATE]
    check_message(body, state.media, dialect, templates=state.templates)
    if dialect == "cloud":
        state.marketing.check(body, state.categories, marketing_api=marketing_api)
    _injected_failure(state, body["to"])
    business = _business_number(request)
    closed = _window_closed(state, business, body)
    if closed and _window_errors(state) == "sync":
        state.refused.append(_refusal(None, body, dialect, "sync"))
        raise ApiError("window", WINDOW_DETAILS)
    number = next(state.ids)
    state.inbox.append({"id": _message_id(dialect, number), **body})
    state.received.append(time.monotonic())
    message_id = state.inbox[-1]["id"]
    if closed:
        state.refused.append(_refusal(message_id, body, dialect, "async"))
    _accepted(state, message_id, business, body, dialect, closed=closed)
    if marketing_api:
        state.marketing.sent.append(message_id)
    if dialect == "cloud":
        accepted: dict[str, Any] = {"id": message_id}
        if marketing_api:  # the MM API's answer adds it (docs/whatsapp-api.md)
            accepted["message_status"] = "accepted"
        return web.json_response(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": body["to"], "wa_id": body["to"]}],
                "messages": [accepted],
            }
        )
    return web.json_response(
        {"messages": [{"id": message_id}], "meta": {"api_status": "stable", "version": "sandbox"}},
        status=201,
    )


def _business_number(request: web.Request) -> str:
    """The business number a message is sent from: Cloud names it in the path; the sandbox's
    On-Premises API is the same one number (so a customer who wrote opens both)."""
    return request.match_info.get("number", PHONE_NUMBER_ID)


def _window_closed(state: SandboxState, business: str, body: dict[str, Any]) -> bool:
    """Whether the API refuses this message for the customer service window: a free-form
    message (anything but a template) to a customer who has not written to this number in
    the last 24 hours (docs/whatsapp-api.md#customer-service-window). The one place that
    reads `enforce_window`."""
    if not state.enforce_window or body["type"] == "template":
        return False
    return not state.customers.window_open(business, body["to"], clock.now().timestamp())


def _window_errors(state: SandboxState) -> str:
    """How a closed window refuses: `async` (accepted, then a `failed` status webhook, which
    Meta mostly does) when there is a webhook to hear it, else `sync` (the 400 answer Meta
    also gives): without a webhook an asynchronous refusal would pass unseen."""
    if state.window_errors != "auto":
        return state.window_errors
    return "async" if state.webhook is not None else "sync"


def _refusal(
    message_id: str | None, body: dict[str, Any], dialect: str, how: str
) -> dict[str, Any]:
    return {
        "id": message_id,
        "to": body["to"],
        "type": body["type"],
        "dialect": dialect,
        "how": how,
    }


def _accepted(
    state: SandboxState,
    message_id: str,
    business: str,
    body: dict[str, Any],
    dialect: str,
    *,
    closed: bool,
) -> None:
    """What follows an accepted message: its statuses to the webhook, and once it is delivered
    (at once without a webhook: nothing says otherwise) its recipient may act on it."""

    def delivered() -> None:
        state.customers.delivered(message_id, business, body, dialect)

    if state.webhook is not None:
        state.webhook.accepted(
            message_id,
            body["to"],
            dialect,
            business,
            window_closed=closed,
            on_delivered=None if closed else delivered,
        )
    elif not closed:
        delivered()


def _message_id(dialect: str, number: int) -> str:
    if dialect == "cloud":
        return "wamid." + base64.b64encode(f"SANDBOX{number:012d}".encode()).decode()
    return f"gBGG{number:012d}"


def _injected_failure(state: SandboxState, to: str) -> None:
    rule = state.faults.fail_recipients.get(to)
    if rule is None:
        return
    code, left, status = rule
    if left is not None:
        if left <= 0:
            return
        rule[1] = left - 1
    raise ApiError("injected", f"injected failure for {to}", status=status, code=code)


async def _message_templates(request: web.Request) -> web.Response:
    """The account's templates, a page at a time, as the Graph API lists them (catalog.py)."""
    _authorize(request)
    state: SandboxState = request.app[STATE]
    waba = request.match_info["waba"]
    if waba != WABA_ID:
        raise ApiError("object", f"Object with ID '{waba}' does not exist")
    try:
        answer = page(state.catalog, request.query, str(request.url.with_query(None)))
    except PagingError as exc:
        raise ApiError("extra", str(exc)) from None
    return web.json_response(answer)


async def _inbox(request: web.Request) -> web.Response:
    state: SandboxState = request.app[STATE]
    return web.json_response({"messages": state.inbox, "requests": state.requests})


async def _reset(request: web.Request) -> web.Response:
    state: SandboxState = request.app[STATE]
    state.inbox.clear()
    state.received.clear()
    state.faults = Faults()
    state.requests = 0
    state.refused.clear()
    state.marketing.sent.clear()
    state.customers.reset()
    return web.json_response({})


async def _set_faults(request: web.Request) -> web.Response:
    """The faults from now on, replacing those before: `{}` or no body at all (`curl -X
    POST`) clears them. A field that is not known, or not a number, is refused (400, one
    line): a typo must not silently mean "no faults"."""
    spec = await _control_body(request, empty={})
    _known(spec, FAULT_FIELDS, "")
    status = spec.get("status") or {}
    if not isinstance(status, dict):
        raise _refused('status must be an object: {"code": 429, "count": 3}')
    _known(status, STATUS_FIELDS, "status.")
    recipients = spec.get("fail_recipients") or {}
    if not isinstance(recipients, dict):
        raise _refused('fail_recipients must be an object: {"<wa id>": 1013}')
    error = status.get("error")
    retry_after = status.get("retry_after")
    request.app[STATE].faults = Faults(
        latency=_number(spec, "latency"),
        status_code=int(_number(status, "code", "status.")),
        status_count=int(_number(status, "count", "status.")),
        status_error=None if error is None else int(_number(status, "error", "status.")),
        retry_after=None if retry_after is None else _number(status, "retry_after", "status."),
        drop=int(_number(spec, "drop")),
        slow=_number(spec, "slow"),
        fail_recipients={str(to): _failure_rule(to, rule) for to, rule in recipients.items()},
    )
    return web.json_response({})


async def _clear_faults(request: web.Request) -> web.Response:
    request.app[STATE].faults = Faults()
    return web.json_response({})


async def _faults_now(request: web.Request) -> web.Response:
    """The faults in force, in the shape POST takes (counts are what is left)."""
    faults = request.app[STATE].faults
    return web.json_response(
        {
            "latency": faults.latency,
            "status": {
                "code": faults.status_code,
                "count": faults.status_count,
                "error": faults.status_error,
                "retry_after": faults.retry_after,
            },
            "drop": faults.drop,
            "slow": faults.slow,
            "fail_recipients": {
                to: {"error": code, "count": left, "status": status}
                for to, (code, left, status) in faults.fail_recipients.items()
            },
        }
    )


def _known(spec: dict[str, Any], fields: tuple[str, ...], prefix: str) -> None:
    unknown = sorted(set(spec) - set(fields))
    if unknown:
        names = [prefix + name for name in unknown]
        raise _refused(f"unknown fields {names}; known: {', '.join(fields)}")


def _number(spec: dict[str, Any], name: str, prefix: str = "") -> float:
    """spec[name] as a number (0 when absent), or a 400 that names it."""
    value = spec.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _refused(f"{prefix}{name} must be a number (0 or more), got {value!r}")
    return float(value)


def _failure_rule(to: str, rule: Any) -> list[Any]:
    """`1013` (always) or `{"error": 131056, "count": 2, "status": 400}` (the first n times)."""
    if isinstance(rule, int) and not isinstance(rule, bool):
        return [rule, None, 400]
    if isinstance(rule, dict) and not set(rule) - {"error", "count", "status"}:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            count = rule.get("count")
            return [
                int(rule["error"]),
                None if count is None else int(count),
                int(rule.get("status", 400)),
            ]
    raise _refused(
        f"fail_recipients[{to!r}] must be an error code or"
        ' {"error": 131056, "count": 2, "status": 400}'
    )


async def _set_webhook(request: web.Request) -> web.Response:
    """{"url": ..., "secret": ..., "delay": s, "fail_share": 0.2, "seed": "..."}: status
    callbacks for every message accepted from now on ({} turns them off)."""
    spec = await request.json()
    state: SandboxState = request.app[STATE]
    if state.webhook is not None:  # its callbacks under way finish (or stop with the server)
        for task in state.webhook.tasks:
            state.leftover.add(task)
            task.add_done_callback(state.leftover.discard)
    state.webhook = None
    if spec.get("url"):
        state.webhook = Webhook(
            url=str(spec["url"]),
            secret=spec.get("secret"),
            delay=float(spec.get("delay", 0.05)),
            fail_share=float(spec.get("fail_share", 0.0)),
            seed=str(spec.get("seed", "flowrun")),
        )
    return web.json_response({})


async def _webhook_decisions(request: web.Request) -> web.Response:
    webhook = request.app[STATE].webhook
    return web.json_response(webhook.decided if webhook else {})


async def _set_window(request: web.Request) -> web.Response:
    """{"enforce": true}: free-form messages need an open customer service window (the
    default, as on the real APIs; false only for tests of the switch itself, see README).
    {"window_errors": "async" | "sync" | "auto"}: how a closed window refuses
    (`_window_errors`). {"everyone_wrote": unix seconds | null}: every customer wrote then
    (`Customers.last_wrote`), or no audience declared. Fields not given stay as they are."""
    spec = await _control_body(request)
    state: SandboxState = request.app[STATE]
    if set(spec) - set(WINDOW_FIELDS):
        raise _refused(f"unknown fields {sorted(set(spec) - set(WINDOW_FIELDS))}")
    enforce = spec.get("enforce", state.enforce_window)
    errors = spec.get("window_errors", state.window_errors)
    if not isinstance(enforce, bool):
        raise _refused("enforce must be true or false")
    if errors not in WINDOW_ERRORS:
        raise _refused(f"window_errors must be one of {', '.join(WINDOW_ERRORS)}")
    everyone = spec.get("everyone_wrote", state.customers.everyone_wrote)
    if everyone is not None:
        everyone = _written_at(everyone)
    state.enforce_window, state.window_errors = enforce, errors
    state.customers.everyone_wrote = everyone
    return await _window(request)


def _written_at(value: Any) -> int:
    """`everyone_wrote`: unix seconds, not in the future (a customer cannot write later)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _refused("everyone_wrote must be unix seconds or null")
    if not 0 <= value <= clock.now().timestamp() + 60:  # a minute for clocks that disagree
        raise _refused("everyone_wrote must be unix seconds, not in the future")
    return int(value)


async def _window(request: web.Request) -> web.Response:
    state: SandboxState = request.app[STATE]
    return web.json_response(
        {
            "enforce": state.enforce_window,
            "window_errors": state.window_errors,
            "everyone_wrote": state.customers.everyone_wrote,
            "windows": state.customers.windows(clock.now().timestamp()),
            "refused": state.refused,
        }
    )


async def _set_customers(request: web.Request) -> web.Response:
    """Simulated customers from now on ({} or all shares 0: none act)."""
    spec = await _control_body(request)
    try:
        simulation = Simulation.parse(spec)
    except Refused as exc:
        raise _refused(str(exc)) from None
    request.app[STATE].customers.simulation = simulation
    return await _customers(request)


async def _customers(request: web.Request) -> web.Response:
    customers = request.app[STATE].customers
    simulation = customers.simulation
    return web.json_response(
        {
            "simulation": None if simulation is None else dataclasses.asdict(simulation),
            "actions": customers.actions,
        }
    )


async def _inbound(request: web.Request) -> web.Response:
    """One customer message, now: answered once the webhook (if any) was told."""
    spec = await _control_body(request)
    try:
        inbound, dialect = Inbound.parse(spec, clock.now().timestamp())
    except Refused as exc:
        raise _refused(str(exc)) from None
    action = await request.app[STATE].customers.inject(inbound, PHONE_NUMBER_ID, dialect)
    return web.json_response(action)


async def _set_marketing(request: web.Request) -> web.Response:
    """{"cloud_api_disabled": true}: /messages refuses MARKETING templates with 131063 (an
    account that must use the Marketing Messages API); false undoes it."""
    spec = await _control_body(request)
    if set(spec) - {"cloud_api_disabled"}:
        raise _refused(f"unknown fields {sorted(set(spec) - {'cloud_api_disabled'})}")
    disabled = spec.get("cloud_api_disabled", request.app[STATE].marketing.cloud_api_disabled)
    if not isinstance(disabled, bool):
        raise _refused("cloud_api_disabled must be true or false")
    request.app[STATE].marketing.cloud_api_disabled = disabled
    return await _marketing(request)


async def _marketing(request: web.Request) -> web.Response:
    """The setting, and the ids of the messages the Marketing Messages API accepted."""
    return web.json_response(request.app[STATE].marketing.said())


async def _control_body(
    request: web.Request, empty: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A control request's JSON object; `empty` stands for no body at all, where allowed."""
    if empty is not None and not (await request.read()).strip():
        return empty
    try:
        spec = await request.json()
    except ValueError:
        raise _refused("the body is not JSON") from None
    if not isinstance(spec, dict):
        raise _refused("the body must be a JSON object")
    return spec


def _refused(reason: str) -> web.HTTPBadRequest:
    """A control request refused: 400 with its one-line reason."""
    return web.HTTPBadRequest(text=json.dumps({"error": reason}), content_type="application/json")


async def _expire_media(request: web.Request) -> web.Response:
    """Forget every uploaded media id, as the Cloud API does after 30 days."""
    request.app[STATE].media.clear()
    return web.json_response({})


async def _expire_tokens(request: web.Request) -> web.Response:
    """Every token stops working (a Cloud token expired; an On-Premises session ended).
    On-Premises logs in again for a new one; Cloud has no login, so the answer names a
    renewed token that works from now on (as Meta's settings give one), and
    `/sandbox/tokens/restore` makes the documented `sandbox-token` work again."""
    state: SandboxState = request.app[STATE]
    state.tokens.clear()
    renewed = f"{TOKEN}-renewed-{uuid.uuid4().hex[:8]}"
    state.tokens.add(renewed)
    return web.json_response({"token": renewed})


async def _restore_token(request: web.Request) -> web.Response:
    """`sandbox-token` works again (after /sandbox/tokens/expire): the token fixed."""
    request.app[STATE].tokens.add(TOKEN)
    return web.json_response({"token": TOKEN})


@contextlib.contextmanager
def running(port: int = 0, state: SandboxState | None = None) -> Iterator[tuple[str, SandboxState]]:
    """The sandbox in a background thread on 127.0.0.1: (base URL, its state) while in use.
    Given a port and the state of an earlier one, it is that API restarted."""
    state = state or SandboxState()
    with serving(build_app(state), "127.0.0.1", port) as url:
        yield url, state


def serve(port: int) -> None:
    """`flowrun sandbox`: serve on 127.0.0.1 until interrupted; what it notes (a client
    that went away) is one line each on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("flowrun sandbox: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    web.run_app(build_app(), host="127.0.0.1", port=port, print=None, access_log=None)
