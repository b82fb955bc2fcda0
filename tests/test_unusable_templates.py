"""A template the API cannot use (missing in that language, wrong number of parameters, paused,
disabled) stops its step once, for everyone, with one line: not thousands of failures one by
one (issue: conversations, item 6). Against the sandbox, over loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.sandbox import SandboxState
from tests.sandbox_helpers import count, flowrun, write_flow

MISSING = """\
  - name: hello
    template: {name: no_such_template, language: en_US}
  - name: note
    text: {body: "See you"}
"""


@pytest.mark.parametrize("kind", ["cloud", "onprem"])
def test_a_missing_template_stops_its_step_once(
    api: tuple[str, SandboxState], folder: Path, kind: str
) -> None:
    base, state = api
    write_flow(folder, base, MISSING, people=60, kind=kind, concurrency=4)
    code, _, err = flowrun("flow.yaml")
    assert code == 1  # the operator has something to fix
    asked = count(folder, "step = 'hello' AND state = 'failed'")
    assert 1 <= asked <= 4  # at most the requests already in flight when the first answer came
    assert state.requests == asked
    assert count(folder, "step = 'hello' AND state = 'skipped'") == 60 - asked
    assert count(folder, "step = 'note' AND state = 'skipped'") == 60  # blocked behind it
    assert f"{60 - asked} message(s) of step hello not sent: its template cannot be used" in err
    assert err.count("no_such_template") <= 2  # said once, not sixty times
    write_flow(folder, base, MISSING.replace("no_such_template", "hello_world"), people=60,
               kind=kind, concurrency=4)  # fmt: skip
    code, _, err = flowrun("flow.yaml", "--retry-failed")
    assert code == 0, err  # fixed: the next run sends everything
    assert count(folder, "state = 'sent'") == 120
