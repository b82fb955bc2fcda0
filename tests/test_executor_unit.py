"""The executor in memory: a scripted `Transport` answers instead of a server, so each rule of
sending is tested in milliseconds. The ledger is still a real SQLite file (with its writer
process): what is on record is the point of these rules.

The end-to-end tests (test_executor.py, test_hardening.py) prove the same over real HTTP.
"""

from __future__ import annotations

import asyncio
import io
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson

from runner import dialect as dialects
from runner.executor import Executor, RunOptions, Summary
from runner.ledger import SqliteLedger, State
from runner.loader import load_flow
from runner.plan import Plan, compile_plan
from runner.progress import Progress
from runner.target import ApiTarget
from runner.transport import MaybeDelivered, NotDelivered, Response, Upload

Answer = Callable[[dict[str, object]], Response | Exception]


def accepted(body: dict[str, object]) -> Response:
    return Response(200, {"messages": [{"id": f"wamid.{body['to']}"}]}, None)


class MemoryTransport:
    """Answers each message body with `answer`, records what was sent."""

    def __init__(self, answer: Answer = accepted) -> None:
        self.answer = answer
        self.sent: list[dict[str, object]] = []
        self.tokens: list[str] = []

    def use_token(self, token: str) -> None:
        self.tokens.append(token)

    async def post_json(self, path: str, body: bytes) -> Response:
        decoded = orjson.loads(body)
        self.sent.append(decoded)
        reply = self.answer(decoded)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def post(
        self,
        path: str,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> Response:
        return await self.post_json(path, body)

    async def upload(self, upload: Upload) -> Response:
        return Response(200, {"id": "media-1"}, None)


FLOW = """\
version: 1
name: unit
api: {phone_number_id: "1", token: "{{ env.WA_TOKEN }}"}
settings: {retries: 2, window: open}  # their audience wrote: the window is not the point
recipients:
  - {phone: "+1 555 010 0001"}
  - {phone: "+1 555 010 0002"}
messages:
  - name: hello
    text: {body: "Hello"}
  - name: bye
    text: {body: "Bye"}
"""


def run(
    tmp_path: Path, transport: MemoryTransport, **options: object
) -> tuple[Summary, dict[tuple[str, str], State]]:
    flow = tmp_path / "flow.yaml"
    flow.write_text(textwrap.dedent(FLOW), "utf-8")
    return execute(tmp_path, compile_plan(load_flow(flow)), transport, **options)


def execute(
    tmp_path: Path, plan: Plan, transport: MemoryTransport, **options: object
) -> tuple[Summary, dict[tuple[str, str], State]]:
    dialect = dialects.build(ApiTarget("cloud", "http://memory", "t", "1"))
    settings = RunOptions(concurrency=4, **options)  # type: ignore[arg-type]

    async def execute(ledger: SqliteLedger) -> Summary:
        executor = Executor(
            plan,
            transport=transport,
            dialect=dialect,
            ledger=ledger,
            options=settings,
            progress=Progress(4, io.StringIO()),
        )
        return await executor.run()

    with SqliteLedger.for_run(tmp_path / "ledger.sqlite", "unit") as ledger:
        summary = asyncio.run(execute(ledger))
        return summary, ledger.states()


def test_every_message_once_in_order_per_recipient(tmp_path: Path) -> None:
    transport = MemoryTransport()
    summary, states = run(tmp_path, transport)
    assert summary.sent == 4
    assert summary.exit_code == 0
    assert set(states.values()) == {"sent"}
    for phone in ("15550100001", "15550100002"):
        mine = [m["text"] for m in transport.sent if m["to"] == phone]
        assert mine == [{"body": "Hello"}, {"body": "Bye"}]


def test_a_refused_message_blocks_the_recipients_later_steps(tmp_path: Path) -> None:
    def refuse_one(body: dict[str, object]) -> Response:
        if body["to"] == "15550100001":
            return Response(400, {"error": {"code": 131026, "message": "Undeliverable"}}, None)
        return accepted(body)

    summary, states = run(tmp_path, MemoryTransport(refuse_one))
    assert states[("hello", "15550100001")] == "failed"
    assert states[("bye", "15550100001")] == "skipped"
    assert summary.failed == 1
    assert summary.blocked == 1
    assert summary.exit_code == 1


def test_no_answer_is_uncertain_and_never_sent_again(tmp_path: Path) -> None:
    def lost(body: dict[str, object]) -> Response | Exception:
        return MaybeDelivered("timeout") if body["to"] == "15550100002" else accepted(body)

    transport = MemoryTransport(lost)
    summary, states = run(tmp_path, transport)
    assert states[("hello", "15550100002")] == "uncertain"
    assert states[("bye", "15550100002")] == "skipped"  # blocked until it is settled
    assert sum(1 for m in transport.sent if m["to"] == "15550100002") == 1
    assert summary.uncertain == 1


def test_not_delivered_is_retried_until_the_retries_run_out(tmp_path: Path) -> None:
    transport = MemoryTransport(lambda body: NotDelivered("refused"))
    summary, states = run(tmp_path, transport)
    assert summary.failed == 2
    # retries: 2, so three attempts for each recipient's first step, and nothing after it
    assert len(transport.sent) == 6
    assert states[("hello", "15550100001")] == "failed"


def test_outside_the_window_the_step_waits_for_the_customer(tmp_path: Path) -> None:
    """131047 answered at once: the step waits (with the refusal on record), the recipient's
    later steps wait behind it; nothing failed, nothing was tried twice."""
    refused = Response(400, {"error": {"code": 131047, "message": "Re-engagement message"}}, None)
    summary, states = run(tmp_path, MemoryTransport(lambda body: refused))
    assert (summary.failed, summary.waiting, summary.refused_window) == (0, {"window": 2}, 2)
    assert states[("hello", "15550100001")] == "waiting"
    assert ("bye", "15550100001") not in states


def test_a_file_swapped_after_validation_is_never_uploaded(tmp_path: Path) -> None:
    """Replacing assets/pic.jpg with a symlink to a file outside the flow's folder after
    validation uploaded the outside file under the genuine file's hash, and a later run sent
    that media id for the genuine picture (hardening round 2, item 4). The bytes uploaded are
    now the bytes checked, or nothing is uploaded."""
    (tmp_path / "assets").mkdir()
    picture = tmp_path / "assets" / "pic.jpg"
    picture.write_bytes(b"\xff\xd8\xff\xe0" + b"genuine" * 100)
    outside = tmp_path.parent / f"{tmp_path.name}-secret.jpg"
    outside.write_bytes(b"\xff\xd8\xff\xe0" + b"private" * 100)
    flow = tmp_path / "flow.yaml"
    flow.write_text(
        FLOW.replace('    text: {body: "Hello"}', "    image: {file: assets/pic.jpg}"), "utf-8"
    )
    plan = compile_plan(load_flow(flow))  # validated: the genuine picture is checked
    picture.unlink()
    picture.symlink_to(outside)
    uploads: list[bytes] = []

    class Recording(MemoryTransport):
        async def upload(self, upload: Upload) -> Response:
            uploads.append(upload.data)
            return await super().upload(upload)

    summary, states = execute(tmp_path, plan, Recording())
    assert uploads == []
    # never reached the API: not failed but not sent (issue 17), the next run sends it
    assert summary.failed == 0
    assert states[("hello", "15550100001")] == "skipped"
    [(reason, messages)] = summary.upload_failed.items()
    assert messages == 2
    assert "'assets/pic.jpg' changed since it was checked" in reason
    with SqliteLedger.for_run(tmp_path / "ledger.sqlite", "unit") as ledger:
        assert ledger.media_id("cloud:http://memory/1", plan.uploads()[0].sha256) is None


def test_follow_sees_a_message_committed_after_a_later_stamped_one() -> None:
    """--follow reads customer messages by arrival stamp; a receiver stamps before it commits,
    so a row may appear after one stamped later. Each is reported once, none is lost."""
    from runner.executor import _Arrivals

    start = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    arrivals = _Arrivals(start)
    first = [("111", "wamid.b", "2026-12-01T10:00:02.000+00:00")]
    assert arrivals.new(first) == {"111"}
    late = [("222", "wamid.a", "2026-12-01T10:00:01.500+00:00"), *first]  # committed later
    assert arrivals.new(late) == {"222"}
    assert arrivals.new(late) == set()
    assert arrivals.since <= "2026-12-01T10:00:01.500+00:00"
