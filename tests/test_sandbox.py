"""The sandbox API over real loopback HTTP: strict like the real API, faults on request.

The `api` fixture (tests/conftest.py) is a sandbox whose customers wrote an hour ago: these
tests send free-form messages and are about other things than the 24-hour window
(tests/test_sandbox_customers.py tests the window)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from runner.sandbox import TOKEN, SandboxState
from tests.conftest import unexpected_refusals

IMAGE = {"link": "https://cdn.example.com/a.jpg", "caption": "hi"}


def call(
    url: str,
    body: Any = None,
    *,
    token: str | None = TOKEN,
    raw: bytes | None = None,
    content_type: str = "application/json",
    method: str = "POST",
    basic: str | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if basic:
        request.add_header("Authorization", f"Basic {base64.b64encode(basic.encode()).decode()}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}"), dict(response.headers)
    except urllib.error.HTTPError as error:
        with error:  # it holds the connection
            return error.code, json.loads(error.read() or b"{}"), dict(error.headers)


def message(kind: str = "image", obj: Any = None, to: str = "15550100001") -> dict[str, Any]:
    return {"recipient_type": "individual", "to": to, "type": kind, kind: obj or IMAGE}


def test_send_and_read_back(api: tuple[str, SandboxState]) -> None:
    base, _ = api
    status, answer, _ = call(f"{base}/v1/messages", message())
    assert status == 201
    message_id = answer["messages"][0]["id"]
    _, inbox, _ = call(f"{base}/sandbox/inbox", method="GET")
    assert inbox["messages"] == [{"id": message_id, **message()}]


def test_upload_then_send_by_id(api: tuple[str, SandboxState]) -> None:
    base, _ = api
    status, answer, _ = call(
        f"{base}/v1/media", raw=b"\xff\xd8\xff data", content_type="image/jpeg"
    )
    assert status == 201
    media_id = answer["media"][0]["id"]
    assert call(f"{base}/v1/messages", message(obj={"id": media_id}))[0] == 201
    status, answer, _ = call(f"{base}/v1/messages", message(obj={"id": "nope"}))
    assert (status, answer["errors"][0]["code"]) == (400, 1006)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (
            message(
                obj={
                    "link": "https://x.example/a.jpg",
                    "id": "f043afd0-f0ae-4b9c-ab3d-696fb4c8cd68",
                }
            ),
            1009,
        ),
        (message(obj={"caption": "no source"}), 1008),
        (message(obj={"link": "ftp://x.example/a.jpg"}), 1009),
        (message("audio", {"link": "https://x.example/a.ogg", "caption": "x"}), 1010),
        (message("image", {"link": "https://x.example/a.jpg", "filename": "a"}), 1010),
        (
            message(
                "image", {"id": "f043afd0-f0ae-4b9c-ab3d-696fb4c8cd68", "provider": {"name": "c"}}
            ),
            1010,
        ),
        ({**message(), "video": {"link": "https://x.example/v.mp4"}}, 1009),
        (message(to="+1 555"), 1013),
        ({**message(), "recipient_type": "group"}, 1009),
    ],
)
def test_strict_like_the_real_api(api: tuple[str, SandboxState], body: Any, code: int) -> None:
    status, answer, _ = call(f"{api[0]}/v1/messages", body)
    assert status == 400
    assert answer["errors"][0]["code"] == code
    assert set(answer["errors"][0]) == {"code", "title", "details"}


def test_token_and_login(api: tuple[str, SandboxState]) -> None:
    base, _ = api
    assert call(f"{base}/v1/messages", message(), token="wrong")[0] == 401
    status, answer, _ = call(f"{base}/v1/users/login", {}, token=None, basic="sandbox:sandbox")
    token = answer["users"][0]["token"]
    assert status == 200
    assert call(f"{base}/v1/messages", message(), token=token)[0] == 201
    assert call(f"{base}/v1/users/login", {}, token=None, basic="sandbox:x")[0] == 401


def test_injected_faults(api: tuple[str, SandboxState]) -> None:
    base, state = api
    call(f"{base}/sandbox/faults", {"status": {"code": 429, "count": 2, "retry_after": 1}})
    status, answer, headers = call(f"{base}/v1/messages", message())
    assert (status, answer["errors"][0]["code"], headers["Retry-After"]) == (429, 1015, "1")
    assert call(f"{base}/v1/messages", message())[0] == 429
    assert call(f"{base}/v1/messages", message())[0] == 201
    call(f"{base}/sandbox/faults", {"fail_recipients": {"15550100002": 1013}})
    status, answer, _ = call(f"{base}/v1/messages", message(to="15550100002"))
    assert (status, answer["errors"][0]["code"]) == (400, 1013)
    call(f"{base}/sandbox/faults", {"drop": 1})
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(f"{base}/v1/messages", message())
    assert len(state.inbox) == 1


def test_an_uploaded_id_must_match_the_message_type(api: tuple[str, SandboxState]) -> None:
    base, _ = api
    _, answer, _ = call(f"{base}/v1/media", raw=b"\xff\xd8\xff data", content_type="image/jpeg")
    media_id = answer["media"][0]["id"]
    status, answer, _ = call(f"{base}/v1/messages", message("video", {"id": media_id}))
    assert (status, answer["errors"][0]["code"]) == (400, 1009)
    too_big = b"RIFF" + b"\0" * 600 * 1024
    status, answer, _ = call(f"{base}/v1/media", raw=too_big, content_type="image/webp")
    assert status == 400
    assert "bytes" in answer["errors"][0]["details"]


@pytest.mark.closed_windows
def test_refusals_fail_a_test_unless_it_expects_them(api: tuple[str, SandboxState]) -> None:
    """The guard of the `api` fixture (tests/conftest.py): a free-form message refused for a
    closed window fails a test at teardown; this test is marked `closed_windows`, so the one
    refusal it causes on purpose is allowed."""
    base, state = api
    assert state.customers.everyone_wrote is not None  # the default: the audience wrote
    assert unexpected_refusals(state, expected=False) is None
    status, answer, _ = call(f"{base}/sandbox/window", {"everyone_wrote": None})
    assert (status, answer["everyone_wrote"]) == (200, None)
    status, _, _ = call(f"{base}/v1/messages", message())  # an image: free-form
    assert status == 400
    assert [r["to"] for r in state.refused] == ["15550100001"]
    problem = unexpected_refusals(state, expected=False)
    assert problem is not None
    assert problem.startswith("1 free-form message(s) sent to a closed 24-hour window")
    assert unexpected_refusals(state, expected=True) is None
