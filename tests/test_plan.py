"""The dry run shows exactly what a run would POST, and the schema stays what the models say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.schema import flow_schema
from tests.conftest import REPO


def flowrun(
    *args: str, cwd: Path = REPO, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess: what people and CI run."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def cloud(to: str, kind: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": kind,
        kind: content,
    }


def test_onboarding_bodies() -> None:
    result = flowrun("plan", "--jsonl", "flows/onboarding.yaml")
    assert result.returncode == 0, result.stderr
    bodies = [json.loads(line) for line in result.stdout.splitlines()]
    # steps that branch on the welcome's answer are not known yet: not among the bodies
    assert len(bodies) == 23
    alice = [b for b in bodies if b["to"] == "15550100001"]
    to = "15550100001"
    welcome = {
        "name": "onboarding_start",
        "language": {"code": "en_US"},
        "components": [
            {
                "type": "header",
                "parameters": [{"type": "image", "image": {"id": "@upload:welcome.jpg"}}],
            },
            {
                "type": "body",
                "parameters": [
                    {"type": "text", "text": "Alice"},
                    {"type": "text", "text": "Boston"},
                ],
            },
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "0",
                "parameters": [{"type": "payload", "payload": "tour"}],
            },
            {
                "type": "button",
                "sub_type": "quick_reply",
                "index": "1",
                "parameters": [{"type": "payload", "payload": "prices"}],
            },
        ],
    }
    assert alice == [
        cloud(to, "template", welcome),
        cloud(to, "sticker", {"id": "@upload:wave.webp"}),
        cloud(
            to,
            "image",
            {
                "link": "https://cdn.example.com/welcome/en.jpg",
                "caption": "Hi Alice! Welcome aboard.",
            },
        ),
        cloud(to, "audio", {"link": "https://cdn.example.com/audio/hello-en.ogg"}),
        cloud(to, "text", {"body": "Questions? Just reply to this message, Alice."}),
    ]
    olga = [b for b in bodies if b["to"] == "79123456789"]
    assert olga[0]["template"]["language"] == {"code": "en_US"}
    jonas = next(b for b in bodies if b["to"] == "49301234567")
    assert jonas["template"]["language"] == {"code": "de"}


def test_plan_summary() -> None:
    result = flowrun("plan", "flows/onboarding.yaml", "--recipients", "1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "  recipients   5\n  messages     23 (2 skipped by when)\n" in out
    assert "  waiting      33 for the customer to write\n" in out
    assert "    questions        text             3 messages  when recipient.lang == 'en'" in out
    assert "  API          https://graph.facebook.com (Cloud API)\n" in out
    assert "rate 80/s, 6 s between messages to one recipient" in out
    assert "  uploads (4, each once, POST /v23.0/PHONE_NUMBER_ID/media):\n" in out
    assert "    assets/tour.mp4  video/mp4" in out
    assert out.count("# 15550100001 step") == 8
    # the words Alice reads, from the lock file beside the flow (flows/onboarding.templates.json)
    assert "# reads: Hi Alice, welcome to Boston. Where shall we start?\n" in out
    assert "# 15550100001 step wave: waits for the customer to write" in out
    assert "15550100002" not in out


def test_every_example_flow_validates() -> None:
    flows = sorted(str(p.relative_to(REPO)) for p in (REPO / "flows").glob("*.yaml"))
    result = flowrun("validate", *flows)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok: ") == len(flows)


def test_checked_in_schema_is_current() -> None:
    checked_in = (REPO / "schemas" / "flow.schema.json").read_text("utf-8")
    assert checked_in.strip() == flow_schema().strip(), (
        "run: flowrun schema > schemas/flow.schema.json"
    )


def test_schema_knows_the_format() -> None:
    schema = json.loads(flow_schema())
    apis = {ref["$ref"].split("/")[-1] for ref in schema["properties"]["api"]["oneOf"]}
    assert apis == {"CloudApi", "OnPremApi"}
    assert schema["$defs"]["CloudApi"]["required"] == ["phone_number_id", "token"]
    assert set(schema["$defs"]["Template"]["properties"]) == {
        "name",
        "language",
        "header",
        "body",
        "limited_time_offer",
        "buttons",
    }
    assert set(schema["required"]) == {"version", "api", "recipients", "messages"}
    assert schema["additionalProperties"] is False
    kinds = {
        next(iter(ref["$ref"].split("/")[-1:]))
        for ref in schema["properties"]["messages"]["items"]["oneOf"]
    }
    assert kinds == {
        "AudioStep",
        "DocumentStep",
        "ImageStep",
        "StickerStep",
        "TemplateStep",
        "TextStep",
        "VideoStep",
    }


def test_errors_are_lines_not_tracebacks(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("version: 1\nmessages: 3\n", "utf-8")
    result = flowrun("validate", "bad.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[0].startswith("bad.yaml:")


def test_output_cut_short_by_a_pipe_is_quiet() -> None:
    result = subprocess.run(
        f"'{sys.executable}' -m runner plan --jsonl flows/onboarding.yaml | head -n 1",
        shell=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.startswith('{"messaging_product": "whatsapp"')
    assert "error" not in result.stderr


def test_usage_errors_exit_2() -> None:
    assert flowrun("plan").returncode == 2
    assert flowrun("validate").returncode == 2


def test_dry_run_is_the_plan() -> None:
    assert (
        flowrun("flows/onboarding.yaml", "--dry-run").stdout
        == flowrun("plan", "flows/onboarding.yaml").stdout
    )
