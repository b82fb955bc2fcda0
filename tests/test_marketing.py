"""Marketing templates and the account's limits, over loopback against the sandbox: with
`api.marketing_messages: true` exactly the steps whose template the lock files as MARKETING go
through `POST /{version}/{phone_number_id}/marketing_messages`; 131063 (marketing templates
refused on the Cloud API's /messages) names that option; `plan` warns at a step whose
marketing template would go to +1 numbers, and `plan` and a run warn when more customers would
get a template outside their window than `settings.messaging_limit`; the default Graph version.
Facts: docs/whatsapp-api.md#marketing-messages-api, #messaging-limits, #graph-api-versions."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runner import models
from runner.dialect.cloud import VERSION
from runner.errors import EXIT_OK
from runner.sandbox import PHONE_NUMBER_ID, SandboxState
from runner.sandbox.catalog import CATALOG
from runner.template_lock import lock_text
from tests.sandbox_helpers import flowrun, post, query

# Two steps: a UTILITY template, then a MARKETING one (runner/sandbox/catalog.py)
STEPS = """\
  - name: trial
    template: {name: drip_reminder, language: en_US, body: ["{{ recipient.name }}"]}
  - name: tip
    template: {name: drip_tip, language: en_US, body: ["{{ recipient.name }}"]}
"""
# Two +1 numbers (North America's example range), one German, one British
PEOPLE = (
    "phone,name\n+1 555 010 0001,Ann\n+1 555 010 0002,Bob\n+49 30 901820,Cem\n+44 7700 900101,Dee\n"
)


def write(
    folder: Path,
    base: str,
    *,
    marketing: bool = False,
    lock: bool = True,
    settings: str = "",
    version: str | None = None,
) -> Path:
    """A Cloud flow for the sandbox at `base` with the two template steps (and the sandbox's
    templates as its lock, unless `lock` is False)."""
    (folder / "people.csv").write_text(PEOPLE, "utf-8")
    api = (
        f"api:\n  base_url: {base}\n  phone_number_id: '{PHONE_NUMBER_ID}'\n"
        "  token: '{{ env.WA_TOKEN }}'\n  timeout: 5\n"
        + ("  marketing_messages: true\n" if marketing else "")
        + (f"  version: {version}\n" if version else "")
    )
    text = (
        f"version: 1\nname: m\n{api}"
        "settings:\n  rate: 100000/s\n  per_recipient_interval: 0\n"
        + settings
        + f"recipients: {{csv: people.csv}}\nmessages:\n{STEPS}"
    )
    (folder / "flow.yaml").write_text(text, "utf-8")
    lock_file = folder / "flow.templates.json"
    if lock:
        lock_file.write_text(lock_text(CATALOG), "utf-8")
    elif lock_file.exists():
        lock_file.unlink()
    return folder / "flow.yaml"


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.load(answer)


def inbox_by_template(base: str) -> dict[str, set[str]]:
    """The accepted messages' ids, by template name."""
    found: dict[str, set[str]] = {}
    for message in get(f"{base}/sandbox/inbox")["messages"]:
        found.setdefault(message["template"]["name"], set()).add(message["id"])
    return found


def test_the_marketing_path_carries_exactly_the_marketing_templates(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, _ = api
    write(folder, base, marketing=True)
    code, _out, err = flowrun("flow.yaml")
    assert code == EXIT_OK, err
    sent = inbox_by_template(base)
    assert len(sent["drip_tip"]) == len(sent["drip_reminder"]) == 4
    # the ids the Marketing Messages API accepted: the MARKETING template's, all of them
    assert set(get(f"{base}/sandbox/marketing")["sent"]) == sent["drip_tip"]
    assert query(folder, "SELECT count(*) FROM messages WHERE state = 'sent'") == [(8,)]


def test_without_the_option_or_without_a_lock_everything_takes_messages(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, _ = api
    write(folder, base)  # a lock, no option
    assert flowrun("flow.yaml")[0] == EXIT_OK
    assert get(f"{base}/sandbox/marketing")["sent"] == []
    # the option, but no lock: no category known; said at the option's line
    write(folder, base, marketing=True, lock=False)
    (folder / "flow.ledger.sqlite").unlink()
    code, _out, err = flowrun("flow.yaml")
    assert code == EXIT_OK, err
    assert get(f"{base}/sandbox/marketing")["sent"] == []
    assert "flow.yaml:8:3: warning: api.marketing_messages: without the template lock" in err
    assert "hint: run flowrun templates pull flow.yaml" in err


def test_the_sandbox_refuses_a_utility_template_on_the_marketing_path(
    api: tuple[str, SandboxState],
) -> None:
    base, _ = api
    template: dict[str, Any] = {
        "name": "drip_reminder",
        "language": {"code": "en_US"},
        "components": [{"type": "body", "parameters": [{"type": "text", "text": "Ann"}]}],
    }
    body: dict[str, Any] = {"messaging_product": "whatsapp", "to": "15550100001"}
    body |= {"type": "template", "template": template}
    url = f"{base}/{VERSION}/{PHONE_NUMBER_ID}/marketing_messages"
    request = urllib.request.Request(
        url,
        json.dumps(body).encode(),
        {"Authorization": "Bearer sandbox-token", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    error = json.load(refused.value)["error"]
    assert (refused.value.code, error["code"]) == (400, 131009)
    assert "marketing templates only" in error["error_data"]["details"]
    # the same template through /messages, and a marketing one on its own path: accepted
    template["name"] = "drip_tip"
    request = urllib.request.Request(url, json.dumps(body).encode(), request.headers)
    with urllib.request.urlopen(request, timeout=5) as answer:
        accepted = json.load(answer)["messages"][0]
    assert accepted["message_status"] == "accepted"
    assert get(f"{base}/sandbox/marketing")["sent"] == [accepted["id"]]


def test_131063_names_the_option(api: tuple[str, SandboxState], folder: Path) -> None:
    base, _ = api
    post(f"{base}/sandbox/marketing", {"cloud_api_disabled": True})
    write(folder, base)
    code, _out, err = flowrun("flow.yaml")
    assert code == 1
    assert "error 131063" in err
    assert "set api.marketing_messages: true" in err
    # the utility template went; the marketing step stopped at its first refusal
    sent = inbox_by_template(base)
    assert len(sent["drip_reminder"]) == 4
    assert "drip_tip" not in sent
    states = query(folder, "SELECT step, state, count(*) FROM messages GROUP BY 1, 2")
    assert ("trial", "sent", 4) in states
    assert {s for step, s, _ in states if step == "tip"} <= {"failed", "skipped"}
    # with the option, the same account takes them: through the Marketing Messages API
    write(folder, base, marketing=True)
    code, _out, err = flowrun("flow.yaml", "--retry-failed")
    assert code == EXIT_OK, err
    assert set(get(f"{base}/sandbox/marketing")["sent"]) == inbox_by_template(base)["drip_tip"]
    assert len(inbox_by_template(base)["drip_tip"]) == 4


def test_plan_warns_at_the_step_whose_marketing_template_goes_to_plus_one(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, _ = api
    write(folder, base)
    code, out, err = flowrun("plan", "flow.yaml")
    assert code == EXIT_OK, err
    warnings = [line for line in err.splitlines() if "+1 (US)" in line]
    assert warnings == [
        "flow.yaml:16:5: warning: step 'tip' sends a MARKETING template to 2 recipient(s) with"
        " +1 (US) numbers: Meta has not delivered marketing templates to +1 numbers since April"
        " 2025 (they fail with error 131049)"
    ]
    assert "Marketing Messages API" not in out  # not asked for: /messages only
    # with the option, the plan shows the marketing path for that step's bodies
    write(folder, base, marketing=True)
    _code, out, _err = flowrun("plan", "flow.yaml")
    assert f"# POST /{VERSION}/{PHONE_NUMBER_ID}/marketing_messages (Marketing Messages API)" in out
    # without the lock flowrun cannot know the category: no warning
    write(folder, base, lock=False)
    assert "+1 (US)" not in flowrun("plan", "flow.yaml")[2]


def test_plan_and_a_run_warn_over_the_messaging_limit(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, state = api
    state.customers.everyone_wrote = None  # nobody wrote: every template is business-initiated
    write(folder, base, settings="  messaging_limit: 250\n")
    assert "messaging_limit" not in flowrun("plan", "flow.yaml")[2]  # 4 recipients: under it
    # 300 recipients, nobody wrote: 300 would get a template outside their window
    rows = "".join(f"+44 7700 9{i:05d},P{i}\n" for i in range(300))
    (folder / "people.csv").write_text("phone,name\n" + rows, "utf-8")
    code, _out, err = flowrun("plan", "flow.yaml")
    assert code == EXIT_OK, err
    line = (
        "warning: 300 recipient(s) would get a template now outside their 24-hour window, more"
        " than settings.messaging_limit (250 distinct customers per rolling 24 hours, per"
        " business portfolio)"
    )
    assert sum(line in row for row in err.splitlines()) == 1
    code, _out, err = flowrun("flow.yaml")  # one warning line before sending; not a refusal
    assert code == EXIT_OK, err
    assert sum(line in row for row in err.splitlines()) == 1
    assert query(folder, "SELECT count(*) FROM messages WHERE state = 'sent'") == [(600,)]
    # a fresh ledger: those who wrote in the last 24 hours (the CSV says so) do not count
    (folder / "flow.ledger.sqlite").unlink()
    hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    rows = "".join(f"+44 7700 9{i:05d},P{i},{hour_ago if i < 100 else ''}\n" for i in range(300))
    write(folder, base, settings="  messaging_limit: 250\n")
    (folder / "people.csv").write_text("phone,name,last_inbound_at\n" + rows, "utf-8")
    assert "messaging_limit" not in flowrun("plan", "flow.yaml")[2]  # 200 of 300
    # unlimited: nothing to check
    write(folder, base, settings="  messaging_limit: unlimited\n")
    rows = "".join(f"+44 7700 9{i:05d},P{i}\n" for i in range(300))
    (folder / "people.csv").write_text("phone,name\n" + rows, "utf-8")
    assert "messaging_limit" not in flowrun("plan", "flow.yaml")[2]


def test_the_default_graph_version_and_a_pinned_one(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, _ = api
    assert VERSION == "v26.0"  # the newest verified (docs/whatsapp-api.md#graph-api-versions)
    api_model = models.CloudApi(phone_number_id="1", token="{{ env.WA_TOKEN }}")
    assert api_model.version == VERSION
    write(folder, base)
    assert f"POST /{VERSION}/{PHONE_NUMBER_ID}/messages" in flowrun("plan", "flow.yaml")[1]
    write(folder, base, version="v23.0")  # a flow may still pin one
    _code, out, _err = flowrun("plan", "flow.yaml")
    assert f"POST /v23.0/{PHONE_NUMBER_ID}/messages" in out
    assert flowrun("flow.yaml")[0] == EXIT_OK
