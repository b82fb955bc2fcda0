"""Cloud's spam rate limit (131048: too many of the number's messages were blocked or reported)
pauses the whole run and slows it, and stops it if the refusals go on: sending more only lowers
the number's quality further (issue: conversations, item 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner import executor
from runner.sandbox import SandboxState
from tests.sandbox_helpers import count, flowrun, post, write_flow

STEPS = "  - name: hello\n    template: {name: hello_world, language: en_US}\n"
ALICE = "15550100001"


@pytest.fixture(autouse=True)
def short_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "SPAM_PAUSE", 0.2)  # a minute in a real run


def test_one_spam_refusal_pauses_the_run_and_the_message_goes_after(
    api: tuple[str, SandboxState], folder: Path
) -> None:
    base, _ = api
    write_flow(folder, base, STEPS, people=5, kind="cloud")
    post(f"{base}/sandbox/faults", {"fail_recipients": {ALICE: {"error": 131048, "count": 1}}})
    code, out, err = flowrun("flow.yaml")
    assert code == 0, err
    assert "sent 5, failed 0" in out
    assert "the API's spam rate limit refused 1 message(s)" in err


def test_spam_refusals_that_go_on_stop_the_run(api: tuple[str, SandboxState], folder: Path) -> None:
    base, state = api
    write_flow(folder, base, STEPS, people=30, kind="cloud", concurrency=1)
    refuse = {f"1555010{i:04d}": 131048 for i in range(30)}
    post(f"{base}/sandbox/faults", {"fail_recipients": refuse})
    code, _, err = flowrun("flow.yaml")
    assert code == 1
    assert "131048" in err
    assert "the run stops" in err
    assert state.requests == executor.SPAM_STOP_AFTER  # not one request per recipient
    assert count(folder, "state = 'sent'") == 0
