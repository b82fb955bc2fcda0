"""Templates as code: the sandbox lists its account's templates as the Graph API does, `flowrun
templates pull` writes them to the lock beside the flow over real HTTP on loopback, and every
template step is checked against that lock (a located error, exit 2) before anything is sent."""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runner.cli import cli
from runner.errors import EXIT_INVALID, EXIT_OK
from runner.sandbox import PHONE_NUMBER_ID, TOKEN, WABA_ID, SandboxState
from runner.sandbox.catalog import CATALOG
from runner.sandbox.checks import ApiError, check_message
from runner.template_lock import lock_text, read_lock
from tests.conftest import HEADER, Result, RunFlow

LISTING = f"/v23.0/{WABA_ID}/message_templates"


def get(url: str, token: str = TOKEN) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_the_sandbox_pages_its_templates_as_graph_does(api: tuple[str, SandboxState]) -> None:
    base, _ = api
    url: str | None = f"{base}{LISTING}?fields=name,language,status&limit=4"
    seen: list[tuple[str, str]] = []
    pages = 0
    while url is not None:
        status, page = get(url)
        assert status == 200
        pages += 1
        assert all(set(t) == {"name", "language", "status", "id"} for t in page["data"])
        seen += [(t["name"], t["language"]) for t in page["data"]]
        assert page["paging"]["cursors"]["after"]
        url = page["paging"].get("next")
        assert url is None or url.startswith(f"{base}{LISTING}?")  # absolute, on the sandbox
    assert len(CATALOG) >= 9  # pages enough to follow
    assert pages == math.ceil(len(CATALOG) / 4)
    assert seen == [(t["name"], t["language"]) for t in CATALOG]


def test_the_sandbox_refuses_a_wrong_token_field_or_account(
    api: tuple[str, SandboxState],
) -> None:
    base, _ = api
    status, body = get(f"{base}{LISTING}", token="not-the-token")
    assert (status, body["error"]["code"], body["error"]["type"]) == (401, 190, "OAuthException")
    status, body = get(f"{base}{LISTING}?fields=name,secret")
    assert (status, body["error"]["code"]) == (400, 100)
    status, body = get(f"{base}/v23.0/1/message_templates")
    assert (status, body["error"]["code"]) == (400, 100)


def pull_flow(folder: Path, base: str) -> Path:
    flow = folder / "flow.yaml"
    flow.write_text(
        "version: 1\napi:\n"
        f"  base_url: {base}\n  phone_number_id: '{PHONE_NUMBER_ID}'\n"
        "  waba_id: '{{ env.WA_WABA_ID }}'\n  token: '{{ env.WA_TOKEN }}'\n  timeout: 5\n"
        "recipients:\n  - {phone: '+1 555 010 0001'}\n"
        "messages:\n  - template: {name: hello_world, language: en_US}\n",
        "utf-8",
    )
    return flow


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Result(result.exit_code, result.stdout, result.stderr)


def test_pull_follows_every_page_and_writes_a_stable_lock_without_secrets(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = api
    monkeypatch.setenv("WA_WABA_ID", WABA_ID)
    pull_flow(folder, base)
    first = invoke("templates", "pull", "flow.yaml", "--page-size", "3")
    assert first.code == EXIT_OK, first.err
    pages = math.ceil(len(CATALOG) / 3)
    assert f"written: {len(CATALOG)} templates ({pages} pages" in first.out
    assert state.requests == pages  # one request a page, none twice
    lock = folder / "flow.templates.json"
    text = lock.read_text("utf-8")
    assert TOKEN not in text
    assert "Bearer" not in text
    assert base not in text
    assert text.endswith("}\n")
    names = [(t["name"], t["language"]) for t in json.loads(text)["templates"]]
    assert names == sorted((t["name"], t["language"]) for t in CATALOG)
    assert read_lock(lock)[("spring_sale", "en_US")].status == "PAUSED"
    again = invoke("templates", "pull", "flow.yaml", "--page-size", "5")
    assert again.code == EXIT_OK
    assert f"unchanged: {len(CATALOG)} templates ({math.ceil(len(CATALOG) / 5)} pages" in again.out
    assert lock.read_text("utf-8") == text  # pulled twice: no diff


def test_pull_with_a_wrong_token_says_why_without_the_token(
    api: tuple[str, SandboxState], folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = api
    monkeypatch.setenv("WA_WABA_ID", WABA_ID)
    monkeypatch.setenv("WA_TOKEN", "wrong-secret-token")
    pull_flow(folder, base)
    result = invoke("templates", "pull", "flow.yaml")
    assert result.code == EXIT_INVALID
    assert "HTTP 401, error 190" in result.err
    assert "wrong-secret-token" not in result.err + result.out
    assert not (folder / "flow.templates.json").exists()


def test_pull_needs_the_account_id_and_a_cloud_api(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (folder / "flow.yaml").write_text(
        HEADER + "recipients: [{phone: '+1 555 010 0001'}]\nmessages: [{text: {body: hi}}]\n",
        "utf-8",
    )
    result = invoke("templates", "pull", "flow.yaml")
    assert result.code == EXIT_INVALID
    assert "flow.yaml:3:3: templates pull needs the WhatsApp Business Account's id" in result.err
    (folder / "flow.yaml").write_text(
        "version: 1\napi: {kind: onprem, base_url: 'http://127.0.0.1:9', token: '{{ env.T }}'}\n"
        "recipients: [{phone: '+1 555 010 0001'}]\nmessages: [{text: {body: hi}}]\n",
        "utf-8",
    )
    result = invoke("templates", "pull", "flow.yaml")
    assert result.code == EXIT_INVALID
    assert "On-Premises API has no endpoint that lists templates" in result.err
    assert "flow.templates.json by hand" in result.err


def test_pull_from_the_built_in_sandbox(folder: Path) -> None:
    (folder / "flow.yaml").write_text(
        HEADER + "recipients: [{phone: '+1 555 010 0001'}]\nmessages: [{text: {body: hi}}]\n",
        "utf-8",
    )
    result = invoke("templates", "pull", "flow.yaml", "--sandbox", "--page-size", "4")
    assert result.code == EXIT_OK, result.err
    assert f"written: {len(CATALOG)} templates ({math.ceil(len(CATALOG) / 4)} pages" in result.out
    assert (folder / "flow.templates.json").read_text("utf-8") == lock_text(CATALOG)


GOOD = """\
  - template:
      name: order_update
      language: en_US
      header: {text: "#4521"}
      body: ["{{ recipient.name }}"]
      buttons: [{quick_reply: track}]
"""
# (the steps, where the one error is (line:col), what it says): the step starts on line 14,
# after the flow's 7 lines and GOOD's step
MISMATCHES = {
    "parameter count": (
        "  - template: {name: payment_nudge, language: en_US, body: [a, b]}\n",
        "14:60",
        "template 'payment_nudge' (en_US) takes 1 body parameter(s), this step gives 2",
    ),
    "missing template": (
        "  - template: {name: order_updates, language: en_US, body: [a]}\n",
        "14:22",
        "the account has no template 'order_updates' (error 132001)\n"
        "  hint: did you mean 'order_update'?",
    ),
    "language": (
        "  - template: {name: payment_nudge, language: de, body: [a]}\n",
        "14:47",
        "template 'payment_nudge' does not exist in 'de' (error 132001)\n"
        "  hint: it is approved in en_US",
    ),
    "paused": (
        "  - template:\n      name: spring_sale\n      language: en_US\n"
        "      header: {image: {link: 'https://example.com/a.png'}}\n      body: [a]\n"
        "      buttons: [{quick_reply: a}, {quick_reply: b}]\n",
        "15:13",
        "template 'spring_sale' is PAUSED, not APPROVED",
    ),
    "header kind": (
        "  - template:\n      name: invoice_reminder\n      language: en_US\n"
        "      header: {image: {link: 'https://example.com/a.png'}}\n      body: [a, b, c]\n",
        "17:23",
        "template 'invoice_reminder' has a document header, not an image",
    ),
    "named given a list": (
        "  - template: {name: appointment_reminder, language: en_US, body: [Ann, 3 March]}\n",
        "14:67",
        "template 'appointment_reminder' takes named parameters (first_name, date)",
    ),
    "button type": (
        "  - template:\n      name: launch_offer\n      language: en_US\n"
        "      header: {video: {link: 'https://example.com/a.mp4'}}\n      body: [a]\n"
        "      buttons: [{quick_reply: a}, {url: b}]\n",
        "19:35",
        "button 1 of template 'launch_offer' is QUICK_REPLY 'Not now'",
    ),
}


def flow_text(steps: str) -> str:
    return HEADER + "recipients:\n  - {phone: '+1 555 010 0001', name: Ann}\nmessages:\n" + steps


def errors(result: Result) -> list[str]:
    return [line for line in result.err_lines if line.startswith("flow.yaml:")]


def test_a_flow_that_fits_the_lock_passes(run_flowrun: RunFlow) -> None:
    result = run_flowrun(flow_text(GOOD), files={"flow.templates.json": lock_text(CATALOG)})
    assert result.code == EXIT_OK, result.err
    assert errors(result) == []


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_each_mismatch_is_one_located_error(run_flowrun: RunFlow, case: str) -> None:
    steps, where, message = MISMATCHES[case]
    lock = {"flow.templates.json": lock_text(CATALOG)}
    result = run_flowrun(flow_text(GOOD + steps), dedent=False, files=lock)
    assert result.code == EXIT_INVALID
    found = errors(result)
    assert len(found) == 1, result.err
    assert found[0].startswith(f"flow.yaml:{where}: {message.splitlines()[0]}")
    assert f"flow.yaml:{where}: {message}" in result.err
    offline = run_flowrun(flow_text(GOOD + steps), "--offline", dedent=False, files=lock)
    assert offline.code == EXIT_OK, offline.err  # the lock is not read: today's checks only


def test_without_a_lock_only_todays_checks(run_flowrun: RunFlow) -> None:
    result = run_flowrun(flow_text(MISMATCHES["paused"][0]), dedent=False)
    assert result.code == EXIT_OK, result.err


def test_a_broken_lock_is_one_clear_error(run_flowrun: RunFlow) -> None:
    result = run_flowrun(flow_text(GOOD), dedent=False, files={"flow.templates.json": "{"})
    assert result.code == EXIT_INVALID
    assert "flow.templates.json: not a readable JSON lock file" in result.err


def test_the_sandbox_refuses_what_the_account_would() -> None:
    def body(name: str, parameters: list[dict[str, str]]) -> dict[str, Any]:
        template = {"name": name, "language": {"code": "en_US"}}
        components = [{"type": "body", "parameters": parameters}]
        return {
            "messaging_product": "whatsapp",
            "to": "15550100001",
            "type": "template",
            "template": {**template, "components": components},
        }

    paused = body("spring_sale", [{"type": "text", "text": "Ann"}])
    with pytest.raises(ApiError) as refused:
        check_message(paused, {}, "cloud")
    assert refused.value.code_for("cloud") == 132015
    positional = [{"type": "text", "text": "Ann"}, {"type": "text", "text": "3 March"}]
    with pytest.raises(ApiError) as refused:
        check_message(body("appointment_reminder", positional), {}, "cloud")
    # as the Cloud API answers a NAMED template sent without names (docs/whatsapp-api.md)
    assert refused.value.code_for("cloud") == 100
    assert refused.value.details == "Parameter name is missing or empty"
    named = [
        {**p, "parameter_name": n} for p, n in zip(positional, ("first_name", "date"), strict=True)
    ]
    check_message(body("appointment_reminder", named), {}, "cloud")  # as the API documents


CUSTOM_LOCK = lock_text(
    [
        {
            "name": "custom_hello",
            "language": "en_US",
            "status": "APPROVED",
            "components": [{"type": "BODY", "text": "Hello {{1}}, from our own account."}],
        }
    ]
)


def test_a_sandbox_run_knows_the_templates_of_the_lock(run_flowrun: RunFlow) -> None:
    """--sandbox takes the lock's templates as the account's: a template only the lock has is
    sent, and a language per recipient that the account lacks is refused (132001) as the
    real API would, though validate could not know it before the run."""
    steps = (
        "  - template:\n      name: custom_hello\n      language: '{{ recipient.lang }}'\n"
        "      body: ['{{ recipient.name }}']\n"
    )
    people = (
        "recipients:\n  - {phone: '+1 555 010 0001', name: Ann, lang: en_US}\n"
        "  - {phone: '+1 555 010 0002', name: Bob, lang: de}\nmessages:\n"
    )
    files = {"flow.templates.json": CUSTOM_LOCK}
    result = run_flowrun(HEADER + people + steps, "--sandbox", command="run", files=files)
    assert result.code == 1, result.err
    assert "132001" in result.out + result.err
    assert "sent 1, failed 1" in result.out


def test_only_the_pull_asks_for_the_account_id(run_flowrun: RunFlow) -> None:
    """A flow that names api.waba_id still validates and runs without WA_WABA_ID set: sending
    never needs it."""
    text = HEADER + "  waba_id: '{{ env.WA_WABA_ID }}'\n" + flow_text(GOOD)[len(HEADER) :]
    result = run_flowrun(text, dedent=False)
    assert result.code == EXIT_OK, result.err
    assert "WA_WABA_ID" not in result.err
