"""A WhatsApp Business API (On-Premises shape) on loopback: for trying flows without an account,
and for testing flowrun over real HTTP instead of mocks.

It checks requests as strictly as the real API does (Bearer token, one media object matching
`type`, exactly one of id and link, http(s) links, caption and filename rules, upload
Content-Type, known media ids), answers with the real shapes and error envelopes, keeps what it
accepted in an inbox, and injects faults on request. Shapes: ../shared/whatsapp-api.md.

Control endpoints (not part of the WhatsApp API) live under /sandbox/:
- GET /sandbox/inbox: the accepted messages, in order; DELETE clears inbox and faults
- POST /sandbox/faults: {"latency": s, "status": {"code": 429, "count": n, "retry_after": s},
  "drop": n, "slow": s, "fail_recipients": {"<wa id>": 1013}}
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .media import LIMITS, MEDIA_TYPES
from .models import CAPTION_MAX, TEXT_BODY_MAX, check_http_url

TOKEN = "sandbox-token"
LOGIN = ("sandbox", "sandbox")
# Media ids the sandbox knows without an upload: the one from Meta's examples, used by the
# example flows' `id:` steps.
PRESET_MEDIA = frozenset({"f043afd0-f0ae-4b9c-ab3d-696fb4c8cd68"})
ALL_MIME = frozenset().union(*(mimes for mimes, _ in LIMITS.values()))

_TITLES = {
    1005: "Access denied",
    1006: "Resource not found",
    1008: "Required parameter is missing",
    1009: "Parameter value is not valid",
    1010: "Parameter not required",
    1013: "User is not valid",
    1015: "Too many requests",
    1014: "Internal error",
}


class ApiError(Exception):
    def __init__(self, code: int, details: str, status: int = 400) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.status = status


@dataclass
class Faults:
    latency: float = 0.0
    status_code: int = 0
    status_count: int = 0
    retry_after: float | None = None
    drop: int = 0
    slow: float = 0.0
    fail_recipients: dict[str, int] = field(default_factory=dict)


@dataclass
class SandboxState:
    inbox: list[dict[str, Any]] = field(default_factory=list)
    media: dict[str, str] = field(default_factory=dict)  # id -> MIME type
    faults: Faults = field(default_factory=Faults)
    requests: int = 0
    ids: Iterator[int] = field(default_factory=itertools.count)


STATE = web.AppKey("state", SandboxState)


def _envelope(code: int, details: str) -> dict[str, Any]:
    return {
        "errors": [{"code": code, "title": _TITLES.get(code, "Error"), "details": details}],
        "meta": {"api_status": "stable", "version": "sandbox"},
    }


def build_app(state: SandboxState | None = None) -> web.Application:
    state = state or SandboxState()
    app = web.Application(client_max_size=101 * 1024 * 1024, middlewares=[_faults, _errors])
    app[STATE] = state
    app.router.add_post("/v1/users/login", _login)
    app.router.add_post("/v1/media", _upload)
    app.router.add_post("/v1/messages", _send)
    app.router.add_get("/sandbox/inbox", _inbox)
    app.router.add_delete("/sandbox/inbox", _reset)
    app.router.add_post("/sandbox/faults", _set_faults)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except ApiError as exc:
        return web.json_response(_envelope(exc.code, exc.details), status=exc.status)


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
        headers = {}
        if faults.retry_after is not None:
            headers["Retry-After"] = f"{faults.retry_after:g}"
        code = 1015 if faults.status_code == 429 else 1014
        return web.json_response(
            _envelope(code, "injected fault"), status=faults.status_code, headers=headers
        )
    response = await handler(request)
    if faults.slow:  # the API did the work; only its answer is late (past the client's timeout)
        await asyncio.sleep(faults.slow)
    return response  # type: ignore[no-any-return]


def _authorize(request: web.Request) -> None:
    if request.headers.get("Authorization") != f"Bearer {TOKEN}":
        raise ApiError(1005, "invalid or missing Bearer token", status=401)


async def _login(request: web.Request) -> web.Response:
    expected = base64.b64encode(f"{LOGIN[0]}:{LOGIN[1]}".encode()).decode()
    if request.headers.get("Authorization") != f"Basic {expected}":
        raise ApiError(1005, "invalid username or password", status=401)
    return web.json_response(
        {"users": [{"token": TOKEN, "expires_after": "2099-01-01 00:00:00+00:00"}]}
    )


async def _upload(request: web.Request) -> web.Response:
    _authorize(request)
    mime = request.headers.get("Content-Type", "").split(";")[0].strip()
    if mime not in ALL_MIME:
        raise ApiError(1009, f"Content-Type '{mime}' is not a supported media type")
    body = await request.read()
    if not body:
        raise ApiError(1008, "the upload is empty")
    media_id = str(uuid.uuid4())
    request.app[STATE].media[media_id] = mime
    return web.json_response({"media": [{"id": media_id}]}, status=201)


async def _send(request: web.Request) -> web.Response:
    _authorize(request)
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(1009, "the body is not JSON") from None
    state: SandboxState = request.app[STATE]
    check_message(body, state.media)
    code = state.faults.fail_recipients.get(body["to"])
    if code is not None:
        raise ApiError(code, f"injected failure for {body['to']}")
    message_id = f"gBGG{next(state.ids):012d}"
    state.inbox.append({"id": message_id, **body})
    return web.json_response(
        {"messages": [{"id": message_id}], "meta": {"api_status": "stable", "version": "sandbox"}},
        status=201,
    )


def check_message(body: Any, media: dict[str, str]) -> None:
    """The On-Premises API's rules for a message body; ApiError for the first broken one."""
    if not isinstance(body, dict):
        raise ApiError(1009, "the body must be a JSON object")
    if body.get("recipient_type") != "individual":
        raise ApiError(1009, "recipient_type must be 'individual'")
    to = body.get("to")
    if not isinstance(to, str) or not to.isdigit() or not 7 <= len(to) <= 15:
        raise ApiError(1013, f"'to' is not a valid WhatsApp id: {to!r}")
    kind = body.get("type")
    if kind not in (*MEDIA_TYPES, "text"):
        raise ApiError(1009, f"unknown type {kind!r}")
    others = [key for key in (*MEDIA_TYPES, "text") if key in body and key != kind]
    if others or not isinstance(body.get(kind), dict):
        raise ApiError(1009, f"the body needs exactly one '{kind}' object")
    if kind == "text":
        _check_text(body["text"])
    else:
        _check_media(kind, body[kind], media)


def _check_text(text: dict[str, Any]) -> None:
    value = text.get("body")
    if not isinstance(value, str) or not value:
        raise ApiError(1008, "text.body is required")
    if len(value) > TEXT_BODY_MAX:
        raise ApiError(1001, "message too long", status=400)
    extra = set(text) - {"body", "preview_url"}
    if extra:
        raise ApiError(1010, f"text does not take {sorted(extra)}")


def _check_media(kind: str, obj: dict[str, Any], media: dict[str, str]) -> None:
    sources = [key for key in ("id", "link") if key in obj]
    if len(sources) != 1:
        raise ApiError(1008 if not sources else 1009, "exactly one of id and link is required")
    if "link" in obj:
        try:
            check_http_url(str(obj["link"]))
        except ValueError as exc:
            raise ApiError(1009, str(exc)) from None
    elif obj["id"] not in media and obj["id"] not in PRESET_MEDIA:
        raise ApiError(1006, f"media id {obj['id']!r} not found")
    allowed = {"id", "link", "provider"}
    if kind in ("image", "video", "document"):
        allowed.add("caption")
    if kind == "document":
        allowed.add("filename")
    extra = set(obj) - allowed
    if extra:
        raise ApiError(1010, f"{kind} does not take {sorted(extra)}")
    if "provider" in obj and "link" not in obj:
        raise ApiError(1010, "provider goes only with link")
    if len(str(obj.get("caption", ""))) > CAPTION_MAX:
        raise ApiError(1009, "caption too long")


async def _inbox(request: web.Request) -> web.Response:
    state: SandboxState = request.app[STATE]
    return web.json_response({"messages": state.inbox, "requests": state.requests})


async def _reset(request: web.Request) -> web.Response:
    state: SandboxState = request.app[STATE]
    state.inbox.clear()
    state.faults = Faults()
    state.requests = 0
    return web.json_response({})


async def _set_faults(request: web.Request) -> web.Response:
    spec = await request.json()
    status = spec.get("status") or {}
    request.app[STATE].faults = Faults(
        latency=float(spec.get("latency", 0)),
        status_code=int(status.get("code", 0)),
        status_count=int(status.get("count", 0)),
        retry_after=status.get("retry_after"),
        drop=int(spec.get("drop", 0)),
        slow=float(spec.get("slow", 0)),
        fail_recipients={str(k): int(v) for k, v in spec.get("fail_recipients", {}).items()},
    )
    return web.json_response({})


@contextlib.contextmanager
def running(port: int = 0) -> Iterator[tuple[str, SandboxState]]:
    """The sandbox in a background thread on 127.0.0.1: (base URL, its state) while in use."""
    state = SandboxState()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(state), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", port)
    loop.run_until_complete(site.start())
    bound = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, name="flowrun-sandbox", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{bound}", state
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def serve(port: int) -> None:
    """`flowrun sandbox`: serve on 127.0.0.1 until interrupted."""
    web.run_app(build_app(), host="127.0.0.1", port=port, print=None, access_log=None)
