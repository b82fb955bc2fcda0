"""Text from outside flowrun (an API's answers, webhooks) never reaches a terminal as control
sequences nor a spreadsheet as a formula (hardening round 2, item 7)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from runner.receiver import Receiver, running
from runner.threadserver import serving
from runner.untrusted import printable, spreadsheet_cell
from tests.sandbox_helpers import flowrun, write_flow

HOSTILE = '\x1b[2J\x1b]0;owned\x07=HYPERLINK("http://evil.example/","click")'
FAKE_LINE = "details\nflow.yaml: sent 999, failed 0\r\x1b[1A\u202eevil"


def test_printable() -> None:
    assert printable(HOSTILE) == '=HYPERLINK("http://evil.example/","click")'
    assert printable(FAKE_LINE) == "details flow.yaml: sent 999, failed 0 evil"
    assert printable("caf\u00e9 \u041f\u0440\u0438\u0432\u0435\u0442 \u2713") == (
        "caf\u00e9 \u041f\u0440\u0438\u0432\u0435\u0442 \u2713"
    )
    assert printable("x" * 5000) == "x" * 999 + "…"
    assert printable("\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\") == "link"
    assert printable("\x9b31mred") == "31mred"  # an 8-bit CSI is a C1 control character


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_formulas_become_text(cell: str) -> None:
    assert spreadsheet_cell(cell) == "'" + cell


def test_plain_cells_are_untouched() -> None:
    assert spreadsheet_cell("15550100001") == "15550100001"
    assert spreadsheet_cell(-1) == -1  # numbers are numbers
    assert spreadsheet_cell(None) is None


@pytest.fixture
def hostile_api() -> Iterator[str]:
    """An 'API' whose every answer carries control sequences and formulas."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        error = {"code": 1013, "title": HOSTILE, "details": FAKE_LINE}
        return web.json_response({"errors": [error]}, status=400)

    app = web.Application()
    app.router.add_post("/v1/messages", refuse)
    with serving(app) as url:
        yield url


def test_an_apis_error_text_reaches_no_terminal_and_no_spreadsheet(
    hostile_api: str, folder: Path
) -> None:
    write_flow(folder, hostile_api, "  - text: {body: hi}\n", people=2)
    code, out, err = flowrun("flow.yaml")
    assert code == 1
    for output in (out, err):
        assert "\x1b" not in output
        assert "\u202e" not in output
        assert "\nflow.yaml: sent 999" not in output
    assert 'failed 2x: HTTP 400, error 1013, =HYPERLINK("http://evil.example/"' in err
    code, report, _ = flowrun("report", "flow.yaml")
    assert code == 0
    assert "\x1b" not in report
    code, table, _ = flowrun("report", "flow.yaml", "--csv")
    rows = list(csv.DictReader(io.StringIO(table)))
    assert {row["error_title"] for row in rows} == {"'" + printable(HOSTILE)}
    assert all("\n" not in row["error_details"] for row in rows)


def test_a_webhooks_error_text_is_kept_printable(tmp_path: Path) -> None:
    from runner.ledger import Batch, LedgerReader, Outcome, SqliteLedger
    from tests.test_listen import SECRET, post

    path = tmp_path / "l.sqlite"
    with SqliteLedger.for_run(path, "f") as run:
        run.commit(Batch(outcomes=[Outcome("s", "15550100001", "sent", message_id="wamid.X")]))
    receiver = Receiver(path, SECRET)
    status = {
        "id": "wamid.X",
        "status": "failed",
        "timestamp": "1700000000",
        "errors": [{"code": 131026, "title": HOSTILE, "error_data": {"details": FAKE_LINE}}],
    }
    with running(receiver) as url:
        assert post(url, {"statuses": [status]}) == 200
    receiver.close()
    with LedgerReader(path) as reader:
        [row] = [dict(zip(reader.columns, r, strict=True)) for r in reader.rows("f")]
    assert row["delivery_error"] == f"{printable(HOSTILE)}: {printable(FAKE_LINE)}"
    assert json.dumps(row).count("\\u001b") == 0
